"""Training and sampling on a CUDA GPU (issue 12, item 5): bf16 autocast, channels-last, CUDA-trained
models saved and loaded on the CPU, CPU generators seeding CUDA sampling.

Marked ``cuda`` and skipped where ``torch.cuda.is_available()`` is false (every CPU machine); on a
GPU machine ``bench/gpu_check.sh`` runs them (``pytest tests/models/test_cuda.py -m cuda``).
Every model here is tiny (16^3 scans, a few steps): seconds on any GPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from models import (
    ModelConfig,
    SamplerConfig,
    TrainConfig,
    Trainer,
    build_model,
    build_sampler,
    load,
    save,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (torch.cuda.is_available() is false); bench/gpu_check.sh runs these"),
]

DEVICE = "cuda"
SHAPE = (1, 16, 16, 16)
CONFIGS = {
    "conv": ModelConfig(data_shape=SHAPE, arch="conv", latent_dims=[4], channels=(4, 8)),
    "hconv": ModelConfig(data_shape=SHAPE, arch="hconv", latent_dims=[4], latent_channels=(2, 2),
                         channels=(4, 8), hidden=(16,), likelihood="logistic"),
}


@pytest.fixture
def fp32():
    """Full fp32 in cuDNN convolutions and CUDA matmuls (no TF32), for comparisons across
    devices and layouts; the previous settings come back afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _scans(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def _trainer(arch: str, **train) -> Trainer:
    torch.manual_seed(0)
    model = build_model(CONFIGS[arch])
    sampler = build_sampler(SamplerConfig(kind="mala", n_steps=2, warmup_steps=3), model.latent_dim)
    settings = {"pretrain_epochs": 2, "epochs": 2, "batch_size": 4, "seed": 1, "device": DEVICE, **train}
    return Trainer(model, sampler, _scans(), TrainConfig(**settings))


@pytest.mark.parametrize("arch", ["conv", "hconv"])
def test_bf16_channels_last_training_on_cuda_gives_finite_losses(arch):
    trainer = _trainer(arch, amp=True)  # channels_last left to auto: on for conv archs on CUDA
    assert trainer.memory_format == torch.channels_last_3d
    before = [p.detach().clone() for p in trainer.model.parameters()]
    kernels = [p for p in trainer.model.parameters() if p.dim() == 5 and p.shape[1] > 1 and p.shape[2] > 1]
    layouts = []
    history = trainer.fit(on_step=lambda done, total: layouts.append(
        all(k.is_contiguous(memory_format=torch.channels_last_3d) for k in kernels)))
    assert kernels and all(layouts), "conv kernels should be channels-last while training"
    assert [r.phase for r in history.records] == [1, 1, 2, 2]
    assert all(math.isfinite(r.elbo) for r in history.records), history.as_dicts()
    assert all(0.0 <= r.accept <= 1.0 for r in history.records if r.phase == 2)
    assert all(p.device.type == DEVICE and torch.isfinite(p).all() for p in trainer.model.parameters())
    changed = sum(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert changed == len(before), "every parameter should have been updated"
    scans = trainer.model.sample(2, generator=torch.Generator(device=DEVICE).manual_seed(0))
    assert scans.shape == (2, *SHAPE) and scans.device.type == DEVICE and torch.isfinite(scans).all()


@pytest.mark.parametrize("arch", ["conv", "hconv"])
def test_channels_last_on_cuda_trains_like_the_default_layout(arch, fp32):
    histories = []
    for channels_last in (False, True):
        trainer = _trainer(arch, channels_last=channels_last, pretrain_epochs=2, epochs=1)
        histories.append([r.elbo for r in trainer.fit().records])
    # fp32 both times, but cuDNN picks other kernels for each layout: not bit for bit
    assert histories[1] == pytest.approx(histories[0], rel=2e-3)


@pytest.mark.parametrize("arch", ["conv", "hconv"])
def test_a_model_trained_on_cuda_loads_and_samples_on_the_cpu(tmp_path, arch, fp32):
    trainer = _trainer(arch, amp=True)
    trainer.fit()
    model, sampler = trainer.model, trainer.sampler
    path = save(tmp_path / "m", model, sampler, {"class": "AD"})
    loaded, loaded_sampler, meta = load(path, device="cpu")
    assert meta == {"class": "AD"}
    assert all(p.device.type == "cpu" for p in [*loaded.parameters(), *loaded_sampler.parameters()])
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a.cpu(), b), name
    assert loaded.sampling_fitted == model.sampling_fitted
    # the same CPU-seeded latents give the same scans on either device (up to kernel rounding)
    on_cpu = loaded.sample(3, generator=torch.Generator().manual_seed(7))
    on_cuda = model.sample(3, generator=torch.Generator().manual_seed(7)).cpu()
    assert on_cpu.shape == (3, *SHAPE) and torch.isfinite(on_cpu).all()
    torch.testing.assert_close(on_cpu, on_cuda, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("arch", ["conv", "hconv"])
def test_a_cpu_generator_seeds_cuda_sampling_reproducibly(arch, fp32):
    torch.manual_seed(0)
    cpu_model = build_model(CONFIGS[arch]).eval()
    cuda_model = build_model(CONFIGS[arch]).eval()
    cuda_model.load_state_dict(cpu_model.state_dict())
    cuda_model.to(DEVICE)
    gen = lambda seed: torch.Generator().manual_seed(seed)
    with torch.no_grad():
        first = cuda_model.sample(4, generator=gen(3))
        again = cuda_model.sample(4, generator=gen(3))
        other = cuda_model.sample(4, generator=gen(4))
        assert first.device.type == DEVICE
        assert torch.equal(first, again)
        assert not torch.allclose(first, other)
        # the noise is drawn on the generator's device, so it is the CPU model's noise exactly
        # (the conv model's prior latents are that noise; hconv's maps pass through its networks)
        cuda_latent = cuda_model.sample_latent(4, generator=gen(3)).cpu()
        cpu_latent = cpu_model.sample_latent(4, generator=gen(3))
        if arch == "conv":
            assert torch.equal(cuda_latent, cpu_latent)
        torch.testing.assert_close(cuda_latent, cpu_latent, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(first.cpu(), cpu_model.sample(4, generator=gen(3)), rtol=1e-3, atol=1e-3)
