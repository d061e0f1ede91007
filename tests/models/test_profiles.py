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
    # A user's model choice over the profile's: only the arch (and its maps) named, so every
    # other field takes that arch's defaults (conv: no maps, noncentered).
    settings = profile_settings(name, {"model": {"arch": arch, **({"latent_channels": maps} if maps else {})}})
    config = AugmentConfig(**settings)
    pre = PreprocessConfig(**settings["preprocess"])
    assert config.pretrain_steps == settings["pretrain_steps"]
    cfg = ModelConfig(data_shape=(1, *pre.target_shape), **config.model.model_dump())
    assert cfg.data_shape[1:] == tuple(settings["preprocess"]["target_shape"])
    assert (cfg.arch, cfg.latent_channels) == (arch, maps)
    assert cfg.channels == tuple(settings["model"]["channels"])


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


def test_config_with_profile_is_the_one_merge_rule_of_cli_and_gateway(tmp_path):
    from mcvae_cli.main import _augment_config, build_parser
    from models.profiles import config_with_profile
    from workers.params import AugmentParams

    own = {"profile": "research", "preprocess": {"target_shape": [16, 16, 16]}, "mcmc_steps": 3}
    merged = config_with_profile(own, "standard")  # the flag / request field wins over the file's key
    assert "profile" not in merged and merged["preprocess"] == {
        "spatial_dims": 3, "target_spacing": 3.0, "target_shape": [16, 16, 16]}
    assert merged["mcmc_steps"] == 3 and merged["pretrain_steps"] == 600
    assert config_with_profile(own)["preprocess"]["target_spacing"] == 2.0  # the file's key alone
    assert config_with_profile({"seed": 1}) == {"seed": 1}  # no profile: unchanged
    assert own["profile"] == "research"  # the caller's dict is not mutated
    with pytest.raises(ValueError, match=r"unknown profile 'huge' \(profiles: demo, standard, research\)"):
        config_with_profile({}, "huge")

    # the CLI (--profile over a file's profile:) and a job's params give the same settings
    path = tmp_path / "c.yaml"
    path.write_text("profile: research\npreprocess: {target_shape: [16, 16, 16]}\nmcmc_steps: 3\n")
    cli = _augment_config(build_parser().parse_args(["augment", "src", "--out", "o", "--config", str(path),
                                                     "--profile", "standard"]))
    job = AugmentParams(dataset="dataset-x", profile="standard",
                        config={"preprocess": {"target_shape": [16, 16, 16]}, "mcmc_steps": 3})
    assert AugmentConfig(**job.augment_config()) == cli


def test_model_scope_flag_overrides_the_config_file(tmp_path):
    from mcvae_cli.main import _augment_config, build_parser

    path = tmp_path / "c.yaml"
    path.write_text("model_scope: shared\n")
    parse = build_parser().parse_args
    assert _augment_config(parse(["augment", "src", "--out", "o", "--config", str(path)])).model_scope == "shared"
    assert _augment_config(parse(["augment", "src", "--out", "o", "--config", str(path),
                                  "--model-scope", "per_class"])).model_scope == "per_class"
    assert _augment_config(parse(["demo", "--model-scope", "shared"])).model_scope == "shared"


@pytest.mark.parametrize(("meta", "n_classes", "requested", "expected"), [
    ({"classes": ["AD", "CN"]}, 2, "CN", ("CN", 1)),
    ({"class": "AD"}, 0, None, ("AD", None)),
    ({"class": "AD"}, 0, "AD", ("AD", None)),
    ({"label": "AD"}, 0, None, ("AD", None)),  # a train job's model
    ({}, 0, None, (None, None)),
])
def test_sample_class_picks_the_class_to_draw(meta, n_classes, requested, expected):
    from models.options import sample_class

    assert sample_class(meta, n_classes, requested) == expected


@pytest.mark.parametrize(("meta", "n_classes", "requested", "words"), [
    ({"classes": ["AD", "CN"]}, 2, None, ["class-conditional", "(classes: AD, CN)"]),
    ({"classes": ["AD", "CN"]}, 2, "MCI", ["no class 'MCI'", "(classes: AD, CN)"]),
    ({"class": "AD"}, 0, "CN", ["trained on class 'AD' only", "'CN'"]),
    ({}, 0, "AD", ["every class together", "leave label out"]),
    ({}, 2, "AD", ["does not record their names"]),
])
def test_sample_class_refuses_a_missing_or_wrong_class(meta, n_classes, requested, words):
    from models.options import sample_class

    with pytest.raises(ValueError) as err:
        sample_class(meta, n_classes, requested, "label")
    assert str(err.value).startswith("label: ") and all(w in str(err.value) for w in words), str(err.value)
