"""bench/peers.py's common observation model: for an mcvae VAE with a Gaussian likelihood it must
reproduce the model's own joint density and log-likelihood (pythae itself is optional)."""

import math

import torch

from bench.peers import GaussianView, Generator
from models import ModelConfig, build_model, log_likelihood


def test_gaussian_view_of_an_mcvae_model_is_the_model_itself():
    torch.manual_seed(0)
    model = build_model(ModelConfig(data_shape=(1, 6, 6), arch="mlp", latent_dims=[3], hidden=(16,),
                                    obs_log_var=math.log(0.05), learn_obs_var=False))
    x = torch.rand(4, 1, 6, 6)
    view = GaussianView(model.encode, model.decode, math.log(0.05), 3)
    u = torch.randn(8, 3)  # two draws per item, sample-major as log_likelihood tiles them
    torch.testing.assert_close(view.log_joint(x.repeat(2, 1, 1, 1), u), model.log_joint(x.repeat(2, 1, 1, 1), u))
    torch.testing.assert_close(view.log_q(x, u), model.log_q(x, u))
    a = log_likelihood(view, x, n_particles=64, generator=torch.Generator().manual_seed(1))
    b = log_likelihood(model, x, n_particles=64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_aggregate_sampling_of_a_generator_stays_near_the_training_latents():
    # Posteriors far from the origin (means around +5): aggregate draws decode from there, prior
    # draws from around 0.
    encode = lambda v: (v.flatten(1)[:, :2] * 0 + 5.0 + v.flatten(1)[:, :2], torch.full((len(v), 2), -4.0))
    decode = lambda z: z.mean(1, keepdim=True).view(-1, 1, 1).expand(-1, 1, 4)
    gen = Generator(encode, decode, seconds=0.0)
    from bench import peers

    peers.LATENT, saved = 2, peers.LATENT
    try:
        x = torch.rand(6, 1, 4)
        agg = gen.sample(200, seed=0, aggregate_of=x)
        prior = gen.sample(200, seed=0)
    finally:
        peers.LATENT = saved
    assert agg.mean() > 0.99  # decoder means of latents near 5, clamped to [0, 1]
    assert 0.2 < prior.mean() < 0.6  # latents near 0: half the means clamp to 0
