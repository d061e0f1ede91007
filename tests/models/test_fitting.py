"""models.fitting: one fitter per model_scope behind ``fit_models`` (shared, transfer, per_class),
each yielding one ClassModel per requested class that draws scans of the data's shape."""

from __future__ import annotations

import json

import pytest
import torch

from models.data import PreprocessConfig
from models.fitting import (
    BASE_KEY,
    FITTERS,
    RETRAIN_SEED_STEP,
    ClassCheckpoints,
    FitRequest,
    fit_learning_subjects,
    fit_models,
)
from models.options import AugmentConfig
from models.training import TrainingCancelled

TINY = {"preprocess": {"spatial_dims": 2, "target_shape": [16, 16], "target_spacing": None},
        "model": {"arch": "mlp", "latent_dims": [4], "hidden": [32]},
        "sampler": {"kind": "mala", "n_steps": 2},
        "train": {"batch_size": 4, "threads": 1},
        "pretrain_steps": 20, "mcmc_steps": 6, "near_copies": "keep", "check_steps": 10, "retrains": 0}
LABELS = ["CN"] * 6 + ["AD"] * 3
TRAIN_IDX = list(range(8))  # the last AD scan is a test row: no model may learn from it
AD_ROWS, CN_ROWS = [6, 7], [0, 1, 2, 3, 4, 5]


def request(tmp_path, scope: str, classes=("AD", "CN"), **kwargs) -> FitRequest:
    torch.manual_seed(0)
    x = torch.rand(len(LABELS), 1, 16, 16)
    config = AugmentConfig(**TINY, model_scope=scope if scope in FITTERS else "shared")
    if scope not in FITTERS:
        config = config.model_copy(update={"model_scope": scope})  # past the validation, as a caller's bug
    pre = PreprocessConfig(spatial_dims=2, target_shape=(16, 16), target_spacing=None)
    kwargs.setdefault("report", lambda stage, fraction: None)
    return FitRequest(x, LABELS, TRAIN_IDX, [f"src/{i}.png" for i in range(len(LABELS))], list(classes), config, pre,
                      tmp_path, "job", notes=[], **kwargs)


@pytest.mark.parametrize("scope", sorted(FITTERS))
def test_every_scope_fits_a_model_per_class_that_draws_scans_of_the_data_shape(tmp_path, scope):
    stages: list[tuple[str, float]] = []
    fitted = list(fit_models(request(tmp_path, scope, report=lambda s, f: stages.append((s, f)))))

    assert [f.label for f in fitted] == ["AD", "CN"]
    for f in fitted:
        scans = f.model.sample(3, generator=torch.Generator().manual_seed(1))
        assert scans.shape == (3, 1, 16, 16) and torch.isfinite(scans).all()
        assert (f.model_dir / "config.json").is_file() and f.model_dir.parent == tmp_path / "models"
        assert f.model_id == f"job/{f.key}" and f.retrains == 0 and len(f.history.records) > 0
        own = AD_ROWS if f.label == "AD" else CN_ROWS
        assert f.learned_from[:len(own)] == own and 8 not in f.learned_from  # the test row never
    # The classes share the job's progress in turn, each after the last, inside 0.05 to 0.95.
    starts = [f.progress[0] for f in fitted]
    assert starts == sorted(starts) and 0.05 <= starts[0] and starts[-1] + fitted[-1].progress[1] <= 0.95 + 1e-9
    fractions = [fraction for _, fraction in stages]
    assert fractions == sorted(fractions) and fractions[-1] <= starts[-1] + fitted[-1].progress[1]


def test_shared_fits_one_model_that_both_classes_draw_from(tmp_path):
    ad, cn = fit_models(request(tmp_path, "shared"))

    assert ad.shared is cn.shared is not None  # one model for the cohort, not one per class
    assert ad.model.model is cn.model.model is ad.shared.model
    assert (ad.model.y, cn.model.y) == (0, 1)  # each draws its own class (AD, CN: sorted)
    assert ad.key == cn.key == "shared" and ad.model_dir == cn.model_dir == tmp_path / "models" / "shared"
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["shared"]
    meta = json.loads((ad.model_dir / "config.json").read_text())["meta"]
    assert meta["classes"] == ["AD", "CN"] and meta["trained_on"] == [f"src/{i}.png" for i in TRAIN_IDX]
    assert sorted(ad.learned_from) == TRAIN_IDX and ad.learned_from[:2] == AD_ROWS  # every class, its own first
    assert (ad.n_base, ad.train_seconds) == (None, cn.train_seconds)
    assert cn.seed == ad.seed + 1  # the class's position in the request


def test_per_class_saves_one_model_per_class_trained_when_asked_for(tmp_path):
    fitted = fit_models(request(tmp_path, "per_class"))
    ad = next(fitted)
    assert not (tmp_path / "models" / "CN").exists()  # CN trains only when the caller asks for it
    cn = next(fitted)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["AD", "CN"]
    assert ad.model is not cn.model and ad.shared is cn.shared is None
    assert (ad.learned_from, cn.learned_from, ad.n_base) == (AD_ROWS, CN_ROWS, None)
    meta = json.loads((ad.model_dir / "config.json").read_text())["meta"]
    assert meta["class"] == "AD" and meta["trained_on"] == ["src/6.png", "src/7.png"]
    assert "base_trained_on" not in meta
    assert meta["seed"] == ad.seed  # draws derive from the seed of the model kept


def test_transfer_starts_each_class_from_a_base_model_of_every_class(tmp_path):
    saved: dict[str, int] = {}
    checkpoints = ClassCheckpoints(every=1000, save=lambda key, state: saved.__setitem__(key, state["global_step"]),
                                   load=lambda key: None)
    (ad,) = fit_models(request(tmp_path, "transfer", classes=["AD"], checkpoints=checkpoints))

    assert set(saved) == {BASE_KEY, "AD"}  # the base model is checkpointed, not delivered
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["AD"]
    assert ad.n_base == len(TRAIN_IDX) and ad.learned_from == AD_ROWS
    meta = json.loads((ad.model_dir / "config.json").read_text())["meta"]
    assert meta["base_trained_on"] == [f"src/{i}.png" for i in TRAIN_IDX]


def test_no_class_asked_fits_nothing(tmp_path):
    for scope in FITTERS:
        assert list(fit_models(request(tmp_path, scope, classes=[]))) == []
    assert not (tmp_path / "models").exists()


def test_an_unknown_scope_is_refused_before_any_training(tmp_path):
    with pytest.raises(ValueError, match="model_scope: 'bogus' is not one of shared, transfer, per_class"):
        fit_models(request(tmp_path, "bogus"))
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(("scope", "what"), [("shared", "the shared model"), ("transfer", "the base model"),
                                             ("per_class", "class 'AD'")])
def test_a_stop_request_ends_the_training_and_saves_nothing(tmp_path, scope, what):
    with pytest.raises(TrainingCancelled, match=f"cancelled while training {what}"):
        list(fit_models(request(tmp_path, scope, should_stop=lambda: True)))
    assert not (tmp_path / "models").exists()


def test_a_model_that_learned_the_class_mean_is_trained_again_from_a_fresh_seed():
    seeds, notes = [], []
    spreads = iter([{"AD": {"warning": True}}, {"AD": {"warning": True}}, {"AD": {"warning": False}}])
    trained, retrains, found = fit_learning_subjects(
        lambda seed, attempt: seeds.append((seed, attempt)) or attempt, lambda trained: next(spreads), 5, 100,
        lambda attempt, warned: notes.append((attempt, sorted(warned))))
    assert seeds == [(100, 0), (100 + RETRAIN_SEED_STEP, 1), (100 + 2 * RETRAIN_SEED_STEP, 2)]
    assert (trained, retrains, found) == (2, 2, {"AD": {"warning": False}})
    assert notes == [(1, ["AD"]), (2, ["AD"])]
    # no retrains left: the last model is kept, warning and all
    kept = fit_learning_subjects(lambda seed, attempt: attempt, lambda trained: {"AD": {"warning": True}}, 0, 1,
                                 lambda *_: pytest.fail("no retrain was allowed"))
    assert kept == (0, 0, {"AD": {"warning": True}})
