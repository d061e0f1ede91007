"""Two-phase training of an MCMC-refined VAE (DESIGN.md section 2).

Phase 1 (``pretrain_epochs``): the plain ELBO for encoder and generative model.
Phase 2 (``epochs``), per minibatch, three optimisers:
- encoder phi on the ELBO at the encoder draw z0;
- sampler (h, C) on the speed-measure loss of the chain started at z0 (beta by its rule);
- generative theta on -log p_theta(x, stopgrad(z_K)) at the chain's end state.
With sampler kind ``none`` phase 2 is plain ELBO training: the no-MCMC baseline.

The loop is a small ``Trainer`` whose ``state_dict`` (weights, optimisers, position in the
epoch) lets a job resume from a checkpoint at any step and continue exactly as it would
have, since every minibatch order and random draw is a function of (seed, epoch, step).

Memory layout (``TrainConfig.channels_last``): while ``fit`` runs, the conv weights and the
minibatches may be channels-last (faster cuDNN kernels on CUDA); outside ``fit`` the model is
in torch's default layout again, and ``state_dict`` snapshots always are, so checkpoints,
saved models and sampling do not depend on it.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, WeightedRandomSampler

from .config import TrainConfig
from .threads import training_threads


class TrainingCancelled(Exception):
    """Raised by a step hook to stop training cooperatively (the last checkpoint stays)."""


@dataclass
class EpochRecord:
    phase: int
    epoch: int  # counted over both phases, from 1
    loss: float  # negative ELBO per item, nats
    elbo: float  # ELBO per item, nats
    bits_per_dim: float  # -ELBO in bits per data dimension
    accept: float | None = None  # phase 2: mean acceptance over chains and steps
    beta: float | None = None
    step_size: float | None = None
    log_det_c: float | None = None
    seconds: float = 0.0
    progress: float = 0.0  # fraction of all steps done

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class TrainHistory:
    records: list[EpochRecord] = field(default_factory=list)

    def as_dicts(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.records]

    def final_accept(self, fraction: float = 0.1) -> float | None:
        """Mean acceptance over the last ``fraction`` of the MCMC epochs (at least one), or None
        without any. One epoch of a minority class is one or two minibatches, whose acceptance
        scatters by about +-0.1, so the last epoch alone says little about where adaptation ended."""
        accepts = [r.accept for r in self.records if r.accept is not None]
        if not accepts:
            return None
        tail = accepts[-max(1, round(fraction * len(accepts))):]
        return sum(tail) / len(tail)


def as_dataset(data: Tensor | Dataset) -> Dataset:
    return TensorDataset(data) if isinstance(data, Tensor) else data


def _contiguous(obj: Any) -> Any:
    """``obj`` (nested dicts, lists, tuples: a snapshot no one else holds) with every tensor in
    torch's default layout. Dicts and lists change in place, so state dicts keep their type and
    ``_metadata``."""
    if isinstance(obj, Tensor):
        return obj.contiguous()
    if isinstance(obj, (dict, list)):
        for k in obj.keys() if isinstance(obj, dict) else range(len(obj)):
            obj[k] = _contiguous(obj[k])
        return obj
    if isinstance(obj, tuple):
        return type(obj)(_contiguous(v) for v in obj)
    return obj


def _batch_tensor(batch: Any) -> Tensor:
    """Minibatches may come as tensors, 1-tuples (TensorDataset) or MONAI-style dicts."""
    if isinstance(batch, dict):
        return batch["image"]
    if isinstance(batch, (list, tuple)):
        return batch[0]
    return batch


class Trainer:
    def __init__(self, model: nn.Module, sampler: nn.Module, data: Tensor | Dataset, cfg: TrainConfig,
                 labels: Tensor | None = None):
        self.model, self.sampler, self.cfg = model, sampler, cfg
        self.device = torch.device(cfg.device)
        # A class-conditional model (cfg.n_classes > 0) learns from (x, y) items: ``labels``
        # beside a tensor of items, or a Dataset whose items are (x, y) pairs.
        self.conditional = bool(getattr(model.cfg, "n_classes", 0))
        self.dataset = as_dataset(data) if labels is None else TensorDataset(data, torch.as_tensor(labels).long())
        if len(self.dataset) == 0:
            raise ValueError("data: the training set is empty")
        first = self.dataset[0]
        if self.conditional and labels is None and not (isinstance(first, (tuple, list)) and len(first) > 1):
            raise ValueError("labels: a class-conditional model needs a class index per item")
        # cfg.class_balance: 1 / (its class's count) per item, every class equally likely in a batch
        self.class_weights = None
        if self.conditional and cfg.class_balance:
            item_labels = torch.as_tensor([int(self.dataset[i][1]) for i in range(len(self.dataset))])
            self.class_weights = 1.0 / torch.bincount(item_labels).double()[item_labels]
        first = _batch_tensor(self.dataset[0])
        expected = tuple(model.cfg.data_shape)
        if tuple(first.shape) != expected:
            raise ValueError(f"data_shape: items have shape {tuple(first.shape)}, model expects {expected}")
        self.model.to(self.device)
        self.sampler.to(self.device)
        self.memory_format = self._memory_format()
        self.mcmc = getattr(sampler, "cfg", None) is not None and sampler.cfg.kind != "none"
        self.encoder_params = list(model.encoder_parameters())
        self.generative_params = list(model.generative_parameters())
        self.sampler_params = [p for p in sampler.parameters() if p.requires_grad]
        self.opt_encoder = torch.optim.Adam(self.encoder_params, lr=cfg.lr)
        self.opt_generative = torch.optim.Adam(self.generative_params, lr=cfg.lr)
        self.opt_sampler = (
            torch.optim.Adam(self.sampler_params, lr=self._sampler_lr()) if self.sampler_params else None
        )
        self.steps_per_epoch = math.ceil(len(self.dataset) / cfg.batch_size)
        self.total_epochs = cfg.pretrain_epochs + cfg.epochs
        self.total_steps = self.steps_per_epoch * self.total_epochs
        self.global_step = 0  # steps completed
        if hasattr(model, "initialize_from_data"):
            # Before any step (a resumed run overwrites it with the checkpoint's weights).
            model.initialize_from_data(*self._data_sample())
        self.history = TrainHistory()
        self._warm_start_asked = False

    def _memory_format(self) -> torch.memory_format | None:
        """The channels-last format of ``cfg.channels_last`` for this model's data, or None.

        None (auto): on for CUDA with the conv archs. On (forced or auto) only for 2-D or 3-D
        data, the ranks channels-last formats exist for (an MLP on 3-D scans may force it too:
        its inputs are then channels-last, its weights have no such rank)."""
        on = self.cfg.channels_last
        if on is None:
            on = self.device.type == "cuda" and getattr(self.model.cfg, "arch", None) in ("conv", "hconv")
        rank = len(self.model.cfg.data_shape) + 1  # with the batch dimension
        if not on or rank not in (4, 5):
            return None
        return torch.channels_last_3d if rank == 5 else torch.channels_last

    @torch.no_grad()
    def _set_layout(self, channels_last: bool) -> None:
        """Weights and buffers of the batch data's rank (conv kernels) to channels-last, or back
        to the default layout. In place (``.data``), so optimisers keep their parameters."""
        if self.memory_format is None:
            return
        rank = len(self.model.cfg.data_shape) + 1
        fmt = self.memory_format if channels_last else torch.contiguous_format
        for module in (self.model, self.sampler):
            for t in [*module.parameters(), *module.buffers()]:
                if t.dim() == rank and not t.is_contiguous(memory_format=fmt):
                    t.data = t.data.contiguous(memory_format=fmt)

    def _to_device(self, batch: Any) -> Tensor:
        """A minibatch's scans on the device, channels-last when that is on."""
        x = _batch_tensor(batch).to(self.device, non_blocking=True)
        return x if self.memory_format is None else x.contiguous(memory_format=self.memory_format)

    def _sampler_lr(self) -> float:
        """SamplerConfig.lr; the deprecated TrainConfig.sampler_lr overrides it when given."""
        if self.cfg.sampler_lr is not None:
            return self.cfg.sampler_lr
        sampler_cfg = getattr(self.sampler, "cfg", None)
        return getattr(sampler_cfg, "lr", 1e-2)

    def _data_sample(self) -> tuple[Tensor, Tensor | None]:
        """Training items for the initial output offsets, and their labels (None unless the model
        is class-conditional): up to 256 of each class (the first ones; enough for a mean)."""
        if not self.conditional:
            items = [_batch_tensor(self.dataset[i]) for i in range(min(len(self.dataset), 256))]
            return torch.stack([torch.as_tensor(i).float() for i in items]).to(self.device), None
        taken: dict[int, int] = {}
        xs, ys = [], []
        for i in range(len(self.dataset)):
            x, y = self.dataset[i][:2]  # one read per item
            y = int(y)
            if taken.get(y, 0) < 256:
                taken[y] = taken.get(y, 0) + 1
                xs.append(torch.as_tensor(x).float())
                ys.append(y)
        return torch.stack(xs).to(self.device), torch.tensor(ys, device=self.device)

    # -- state for checkpoints -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A snapshot (deep copy: optimiser steps must not change a checkpoint already taken), every
        tensor in the default layout whatever ``channels_last`` is."""
        snapshot = copy.deepcopy({
            "model": self.model.state_dict(),
            "sampler": self.sampler.state_dict(),
            "opt_encoder": self.opt_encoder.state_dict(),
            "opt_generative": self.opt_generative.state_dict(),
            "opt_sampler": self.opt_sampler.state_dict() if self.opt_sampler else None,
            "global_step": self.global_step,
            "history": self.history.as_dicts(),
        })
        return snapshot if self.memory_format is None else _contiguous(snapshot)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.sampler.load_state_dict(state["sampler"])
        self.opt_encoder.load_state_dict(state["opt_encoder"])
        self.opt_generative.load_state_dict(state["opt_generative"])
        if self.opt_sampler is not None and state.get("opt_sampler") is not None:
            self.opt_sampler.load_state_dict(state["opt_sampler"])
        self.global_step = int(state["global_step"])
        self.history = TrainHistory([EpochRecord(**r) for r in state.get("history", [])])

    # -- the loop ------------------------------------------------------------------------
    def _loader(self, epoch: int) -> DataLoader:
        order = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        balanced = self.class_weights
        return DataLoader(
            self.dataset,
            batch_size=self.cfg.batch_size,
            shuffle=balanced is None,
            sampler=None if balanced is None else WeightedRandomSampler(
                balanced, num_samples=len(self.dataset), replacement=True, generator=order),
            generator=order,
            num_workers=self.cfg.num_workers,
            drop_last=False,
        )

    def _autocast(self):
        if self.cfg.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _clip(self, params: list[Tensor]) -> None:
        if self.cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)

    def _labels(self, batch: Any) -> dict[str, Tensor]:
        """{"y": labels} for a class-conditional model's minibatch, else {} (the models'
        keyword for the class, left out so that unconditional models keep their signature)."""
        return {"y": batch[1].to(self.device)} if self.conditional else {}

    def _elbo(self, x: Tensor, generator: torch.Generator | None, **y) -> tuple[Tensor, Tensor]:
        """Per-item ELBO at a reparameterised encoder draw, and that draw."""
        with self._autocast():
            u, log_q = self.model.rsample(x, generator=generator, **y)
            return (self.model.log_joint(x, u, **y) - log_q).float(), u

    def _pretrain_step(self, x: Tensor, generator, **y) -> dict[str, float]:
        elbo, _ = self._elbo(x, generator, **y)
        loss = -elbo.mean()
        self.opt_encoder.zero_grad(set_to_none=True)
        self.opt_generative.zero_grad(set_to_none=True)
        loss.backward()
        self._clip(self.encoder_params + self.generative_params)
        self.opt_encoder.step()
        self.opt_generative.step()
        return {"elbo": float(elbo.detach().mean())}

    def _sampler_step(self, loss: Tensor) -> None:
        """One optimiser step of the sampler's (h, C) on a speed-measure loss."""
        self.opt_sampler.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_sampler.step()

    def _mcmc_step(self, x: Tensor, generator, **y) -> dict[str, float]:
        model, sampler = self.model, self.sampler
        elbo, u0 = self._elbo(x, generator, **y)
        self.opt_encoder.zero_grad(set_to_none=True)
        (-elbo.mean()).backward(inputs=self.encoder_params)
        self._clip(self.encoder_params)
        self.opt_encoder.step()

        # The same encoder draw starts the chains (run() detaches it).
        target = lambda u: model.log_joint(x, u, **y)
        if not self._warm_start_asked and hasattr(sampler, "warm_start"):
            # Once per fit(), on its first MCMC step: the sampler's own flag (saved in checkpoints)
            # makes it a no-op after a resume; asking only once keeps a device sync off every step.
            sampler.warm_start(target, u0.float(), generator=generator,
                               balance_beta=getattr(sampler.cfg, "beta_balance", False))
            self._warm_start_asked = True
        sampler.train()
        per_step = self.opt_sampler is not None and getattr(sampler.cfg, "update", "per_batch") == "per_step"
        u_end, infos = sampler.run(u0.float(), target, generator=generator,
                                   on_loss=self._sampler_step if per_step else None)
        if self.opt_sampler is not None and not per_step and infos and infos[0].loss is not None:
            self._sampler_step(torch.stack([i.loss for i in infos]).mean())

        with self._autocast():
            decoder_loss = -self._decoder_log_joint(x, u_end.detach(), **y).float().mean()
        self.opt_generative.zero_grad(set_to_none=True)
        decoder_loss.backward(inputs=self.generative_params)
        self._clip(self.generative_params)
        self.opt_generative.step()
        diag = infos[-1].diagnostics if infos else {}
        return {
            "elbo": float(elbo.detach().mean()),
            "accept": sum(i.diagnostics["accept"] for i in infos) / max(len(infos), 1),
            "beta": diag.get("beta", float("nan")),
            "step_size": diag.get("step_size", float("nan")),
            "log_det_c": diag.get("log_det_c", float("nan")),
        }

    def _decoder_log_joint(self, x: Tensor, u: Tensor, **y) -> Tensor:
        """The decoder's phase-2 objective at the chains' end points: log p_theta(x, z) at the
        latents z they stand for, held fixed (the Fisher identity's gradient).

        In the centered parameterisation that is log_joint(x, u). In the noncentered one, when the
        prior has parameters (several layers, or a learned class prior), log p(x, eps) at fixed eps
        would leave the prior's scales out of the objective: theta could widen or shrink them at no
        cost while q, in eps space, had to follow, and hierarchies' phase 2 diverged
        (docs/RESULTS.md). So the end points are mapped to z and scored by the centered density."""
        model = self.model
        if not (model.noncentered and (len(model.latent_dims) > 1 or getattr(model.cfg, "n_classes", 0))):
            return model.log_joint(x, u, **y)
        with torch.no_grad():
            z = model.chain_to_latent(u, **y)
        return model.latent_log_joint(x, z, **y)

    def fit(
        self,
        callback: Callable[[EpochRecord], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        checkpoint_every: int | None = None,
        on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    ) -> TrainHistory:
        """Train from ``global_step`` to the end.

        ``on_step(done, total)`` runs after every step and may raise TrainingCancelled;
        ``on_checkpoint(state_dict)`` runs every ``checkpoint_every`` steps. With ``cfg.threads``
        set, torch uses that many CPU threads meanwhile (the previous count is restored). With
        channels-last on, the weights are channels-last meanwhile and in the default layout again
        when it returns or raises.
        """
        previous_threads = torch.get_num_threads()
        # the config's own count, else the process's capped by this training's size (models/threads.py)
        torch.set_num_threads(self.cfg.threads if self.cfg.threads is not None else training_threads(
            previous_threads, self.cfg.batch_size * math.prod(self.model.cfg.data_shape[1:])))
        try:
            self._set_layout(True)
            return self._fit(callback, on_step, checkpoint_every, on_checkpoint)
        finally:
            self._set_layout(False)
            torch.set_num_threads(previous_threads)

    def _fit(self, callback, on_step, checkpoint_every, on_checkpoint) -> TrainHistory:
        self.model.train()
        n_dims = math.prod(self.model.cfg.data_shape)
        start_epoch, skip = divmod(self.global_step, self.steps_per_epoch)
        for epoch in range(start_epoch, self.total_epochs):
            phase = 1 if epoch < self.cfg.pretrain_epochs or not self.mcmc else 2
            started, sums, count = time.perf_counter(), {}, 0
            for index, batch in enumerate(self._loader(epoch)):
                if epoch == start_epoch and index < skip:
                    continue  # resumed mid-epoch: these batches were done before the checkpoint
                x = self._to_device(batch)
                step_seed = self.cfg.seed * 1_000_003 + epoch * 10_007 + index
                gen = torch.Generator(device=self.device).manual_seed(step_seed)
                y = self._labels(batch)
                stats = self._pretrain_step(x, gen, **y) if phase == 1 else self._mcmc_step(x, gen, **y)
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value * len(x)
                count += len(x)
                self.global_step += 1
                due = bool(checkpoint_every and on_checkpoint and self.global_step % checkpoint_every == 0)
                # A checkpoint on an epoch's last step waits for that epoch's record (below).
                if due and index < self.steps_per_epoch - 1:
                    on_checkpoint(self.state_dict())
                if on_step is not None:
                    on_step(self.global_step, self.total_steps)
            means = {k: v / max(count, 1) for k, v in sums.items()}
            record = EpochRecord(
                phase=phase,
                epoch=epoch + 1,
                loss=-means.get("elbo", float("nan")),
                elbo=means.get("elbo", float("nan")),
                bits_per_dim=-means.get("elbo", float("nan")) / (n_dims * math.log(2)),
                accept=means.get("accept"),
                beta=means.get("beta"),
                step_size=means.get("step_size"),
                log_det_c=means.get("log_det_c"),
                seconds=time.perf_counter() - started,
                progress=self.global_step / max(self.total_steps, 1),
            )
            self.history.records.append(record)
            if checkpoint_every and on_checkpoint and self.global_step % checkpoint_every == 0:
                on_checkpoint(self.state_dict())
            if callback is not None:
                callback(record)
        self._set_layout(False)  # the sampling distribution sees the model as sampling will
        self.model.eval()
        self.sampler.eval()
        if hasattr(self.model, "fit_sampling_distribution") and self.global_step >= self.total_steps:
            self.model.fit_sampling_distribution(
                self._sampling_batches(), generator=torch.Generator(device=self.device).manual_seed(self.cfg.seed))
        return self.history

    def _sampling_batches(self, limit: int = 2048):
        """The training items in batches, for the sampling distribution: all of them, or a
        seeded random ``limit`` of them (not the first ones: a cohort may be sorted by site)."""
        n = len(self.dataset)
        order = torch.arange(n) if n <= limit else torch.randperm(
            n, generator=torch.Generator().manual_seed(self.cfg.seed))[:limit]
        for start in range(0, len(order), self.cfg.batch_size):
            rows = [self.dataset[int(i)] for i in order[start:start + self.cfg.batch_size]]
            x = torch.stack([torch.as_tensor(_batch_tensor(r)).float() for r in rows]).to(self.device)
            if self.conditional:  # (x, y): one sampling distribution per class
                yield x, torch.as_tensor([int(r[1]) for r in rows], device=self.device)
            else:
                yield x


def train(
    model: nn.Module,
    sampler: nn.Module,
    data: Tensor | Dataset,
    cfg: TrainConfig,
    callback: Callable[[EpochRecord], None] | None = None,
    labels: Tensor | None = None,
) -> TrainHistory:
    """Train ``model`` and ``sampler`` in place on ``data`` ((N, *data_shape) or a Dataset);
    ``labels`` (N,) class indices for a class-conditional model.

    Every random draw comes from generators seeded by ``cfg.seed``: torch's global RNG is
    neither used nor reseeded (the caller's stream of random numbers is left as it was).
    """
    return Trainer(model, sampler, data, cfg, labels=labels).fit(callback=callback)
