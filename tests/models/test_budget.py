"""models/budget.py: the analytic parameter count against the built networks, and the
documented profiles within the default limits."""

from __future__ import annotations

import pytest

from models import ModelConfig, build_model
from models.budget import AUGMENT_FIELDS, Network, augment_estimate, check, network_size
from models.profiles import PROFILE_NAMES, profile_settings
from workers.settings import Settings

CASES = [
    {"data_shape": (1, 32, 32, 32), "arch": "conv", "channels": (8, 16, 32)},
    {"data_shape": (1, 32, 32, 32), "arch": "hconv", "channels": (8, 16, 32), "latent_channels": (4, 8)},
    {"data_shape": (1, 32, 32, 32), "arch": "mlp", "hidden": (512, 128), "latent_dims": [16, 8]},
    {"data_shape": (1, 32, 32, 32), "arch": "linear"},
    {"data_shape": (1, 32, 32), "arch": "conv", "channels": (8, 16)},
]


@pytest.mark.parametrize("values", CASES, ids=lambda v: f"{v['arch']}-{len(v['data_shape']) - 1}d")
def test_parameter_estimate_within_15_percent_of_the_built_model(values):
    cfg = ModelConfig(**values)
    real = sum(p.numel() for p in build_model(cfg).parameters())
    est, _ = network_size(Network(shape=cfg.data_shape[1:], arch=cfg.arch, channels=cfg.channels, hidden=cfg.hidden,
                                  latent_dims=tuple(cfg.latent_dims), latent_channels=cfg.latent_channels))
    assert 0.85 * real <= est <= 1.15 * real, (real, est)


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_every_profile_fits_the_default_limits(name):
    est = augment_estimate(profile_settings(name))
    check(est, Settings().job_limits, AUGMENT_FIELDS)  # OverBudget if one is over
