"""Resolution profiles (issue 12, item 5): defined once, torch-free, valid for the models."""

from __future__ import annotations

import subprocess
import sys

import pytest

from models.augment import AugmentConfig
from models.config import ModelConfig
from models.data import PreprocessConfig
from models.profiles import PROFILE_NAMES, profile_settings


def test_profiles_import_without_torch():
    code = ("import sys, models.profiles, models.config; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:3]")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", PROFILE_NAMES)
@pytest.mark.parametrize("arch,maps", [("conv", ()), ("hconv", (2, 4))])
def test_every_profile_makes_a_valid_augment_config_and_model_config(name, arch, maps):
    settings = profile_settings(name)
    config = AugmentConfig(**settings)
    pre = PreprocessConfig(**settings["preprocess"])
    assert config.pretrain_steps == settings["pretrain_steps"]
    extra = {"latent_channels": maps, "latent_dims": [16]} if arch == "hconv" else {}
    cfg = ModelConfig(data_shape=(1, *pre.target_shape),
                      **{**config.model.model_dump(), **extra, "arch": arch})
    assert cfg.data_shape[1:] == tuple(settings["preprocess"]["target_shape"])


def test_profiles_differ_in_grid_and_spacing():
    grids = {n: (tuple(profile_settings(n)["preprocess"]["target_shape"]),
                 profile_settings(n)["preprocess"]["target_spacing"]) for n in PROFILE_NAMES}
    assert grids == {"demo": ((32, 32, 32), 6.0), "standard": ((64, 64, 64), 3.0),
                     "research": ((96, 112, 96), 2.0)}


def test_overrides_merge_key_by_key_and_unknown_names_are_refused():
    merged = profile_settings("standard", {"train": {"lr": 1e-3}, "mcmc_steps": 10})
    assert merged["train"] == {"batch_size": 8, "lr": 1e-3} and merged["mcmc_steps"] == 10
    assert profile_settings("standard")["mcmc_steps"] == 150  # the definition is not mutated
    with pytest.raises(ValueError, match="profile: unknown profile 'huge'"):
        profile_settings("huge")


def test_cli_takes_a_profile_from_the_flag_or_the_config_file(tmp_path):
    from mcvae_cli.main import _augment_config, build_parser

    args = build_parser().parse_args(["demo", "--profile", "standard", "--mcmc-steps", "7"])
    config = _augment_config(args)
    assert config.preprocess.target_shape == (64, 64, 64) and config.model.channels == (8, 16, 32, 64)
    assert config.mcmc_steps == 7  # flags still override the profile
    path = tmp_path / "c.yaml"
    path.write_text("profile: research\ntrain: {device: cpu}\n")
    config = _augment_config(build_parser().parse_args(["demo", "--config", str(path)]))
    assert config.preprocess.target_spacing == (2.0, 2.0, 2.0) and config.train.device == "cpu"
    assert config.train.amp  # the profile's other train settings stay
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--profile", "huge"])
