"""What each job kind accepts, checked when a job is submitted.

These schemas cover the job itself (which artifacts, how many scans, which class). The nested
library configs (``model``, ``sampler``, ``train``, ``preprocess``, augmentation ``config``)
travel as plain dicts. An augmentation's ``config`` and ``target`` are checked here, at submit,
by the library's own torch-free rules (``models.options.AugmentConfig``, ``models.targets``),
so an unknown field, a wrong type or a bad target is refused before anything is queued; the
other nested configs are validated when the job starts on a worker (a bad one fails the job at
once, with the field named, and is not retried).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.budget import (
    AUGMENT_FIELDS,
    TRAIN_FIELDS,
    augment_estimate,
    check,
    model_bytes,
    train_estimate,
)
from models.options import AugmentConfig
from models.profiles import PROFILE_NAMES, config_with_profile
from models.targets import parse_target

from .artifacts import kind_of
from .queues import TASKS
from .settings import Settings

KINDS = TASKS  # the job kinds: one Celery task each


class InvalidParams(ValueError):
    """Bad job input; the message names the field."""


def _artifact(kind: str):
    def check(value: str | None) -> str | None:
        if value is not None and kind_of(value) != kind:
            raise ValueError(f"expected a {kind} artifact id, got {value!r}")
        return value

    return check


def _is_id(value: str) -> bool:
    try:
        kind_of(value)
    except ValueError:
        return False
    return True


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestParams(_Params):
    """Validate a cohort and store it as a dataset artifact."""

    source: str = Field(description="dataset artifact id of an upload, or a path the worker can read: "
                                    "a class-per-folder tree, a CSV manifest, a .zip or .tar.gz")
    name: str | None = Field(None, max_length=200, description="a label for people")


class TrainParams(_Params):
    """Fit one MCMC-refined VAE on the scans of a dataset (optionally of one class)."""

    dataset: str
    label: str | None = Field(None, description="train on this class only; None: every scan")
    preprocess: dict[str, Any] = Field(default_factory=dict, description="models.data.PreprocessConfig")
    model: dict[str, Any] = Field(default_factory=dict, description="models.ModelConfig less data_shape")
    sampler: dict[str, Any] = Field(default_factory=dict, description="models.SamplerConfig")
    train: dict[str, Any] = Field(default_factory=dict, description="models.TrainConfig less device")
    checkpoint_every: int | None = Field(None, ge=1, description="steps; None: MCVAE_CHECKPOINT_EVERY")

    _dataset = field_validator("dataset")(_artifact("dataset"))

    @field_validator("train")
    @classmethod
    def _no_device(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "device" in v:
            raise ValueError("device is chosen by the worker (MCVAE_DEVICE), not per job")
        return v


class SampleParams(_Params):
    """Draw scans from a trained model (latents from its sampling distribution: ModelConfig.sampling)."""

    model: str
    n: int = Field(16, ge=1)
    seed: int = 0
    batch_size: int = Field(256, ge=1, le=4096)
    label: str | None = Field(None, max_length=128, description=(
        "the class to draw: required for a shared (class-conditional) model, one of its classes; "
        "optional for a per-class model (must then be its class); models.options.sample_class"))

    _model = field_validator("model")(_artifact("model"))


class EvaluateParams(_Params):
    """Held-out log-likelihood of a trained model on one class of a dataset."""

    model: str
    dataset: str
    label: str | None = Field(None, description="None: the class the model was trained on")
    split: str | None = Field(None, description="None: the 'test' split if the dataset has one, else all")
    n_particles: int = Field(100, ge=1, le=100_000)
    proposal: Literal["encoder", "mcmc"] = "encoder"
    max_items: int = Field(256, ge=1, le=100_000)
    seed: int = 0

    _model = field_validator("model")(_artifact("model"))
    _dataset = field_validator("dataset")(_artifact("dataset"))


class AugmentParams(_Params):
    """Balance a dataset with synthetic minority-class scans (models.augment.augment)."""

    dataset: str
    target: str | float | dict[str, int] = Field(
        "balance", description="'balance', a ratio of the majority count, or synthetic scans to add "
                               "per class: {'AD': 40} or the CLI's 'AD=40,MCI=10'")
    config: dict[str, Any] = Field(default_factory=dict, description="models.options.AugmentConfig")
    profile: str | None = Field(None, description=(
        f"a resolution profile ({', '.join(PROFILE_NAMES)}, models/profiles.py) whose settings lie "
        "under config's own: models.profiles.config_with_profile, the CLI's --profile rule"))

    _dataset = field_validator("dataset")(_artifact("dataset"))

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, v: str | None) -> str | None:
        if v is not None and v not in PROFILE_NAMES:
            raise ValueError(f"unknown profile {v!r} (profiles: {', '.join(PROFILE_NAMES)})")
        return v

    def augment_config(self) -> dict[str, Any]:
        """The AugmentConfig settings the job runs with: the profile's under config's own."""
        return config_with_profile(self.config, self.profile)

    @field_validator("target", mode="before")
    @classmethod
    def _one_target_syntax(cls, v):
        # The CLI's rule, so "AD=40" means the same at both doors (stored parsed: {"AD": 40}).
        if isinstance(v, bool) or not isinstance(v, (str, int, float, dict)):
            raise ValueError("expected 'balance', a ratio, or counts per class")  # noqa: TRY004 (pydantic wants ValueError)
        try:
            return parse_target(v)
        except ValueError as err:
            raise ValueError(str(err).removeprefix("target: ")) from None

    @field_validator("config")
    @classmethod
    def _known_config(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            config = AugmentConfig(**v)
        except ValidationError as err:
            raise ValueError(describe(err)) from None
        except TypeError as err:
            raise ValueError(str(err)) from None
        if "device" in config.train.model_fields_set:
            raise ValueError("train.device is chosen by the worker (MCVAE_DEVICE), not per job")
        return v

    @model_validator(mode="after")
    def _config_with_profile(self) -> AugmentParams:
        # config alone was checked above; merged with the profile it must hold together too
        # (the profile's train.device, e.g. research's cuda, is replaced by the worker's).
        if self.profile is not None:
            try:
                AugmentConfig(**self.augment_config())
            except ValidationError as err:
                raise ValueError(describe(err, "config")) from None
        return self


SCHEMAS: dict[str, type[_Params]] = {
    "ingest": IngestParams,
    "train": TrainParams,
    "sample": SampleParams,
    "augment": AugmentParams,
    "evaluate": EvaluateParams,
}


def describe(err: ValidationError, prefix: str = "") -> str:
    """A pydantic error as one line that names each field: 'n: Input should be ...; ...'."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def validate(kind: str, params: dict[str, Any] | None, settings: Settings) -> _Params:
    if kind not in SCHEMAS:
        raise InvalidParams(f"kind: unknown job kind {kind!r}; expected one of {', '.join(KINDS)}")
    if params is not None and not isinstance(params, dict):
        raise InvalidParams(f"params: expected an object, got {type(params).__name__}")
    try:
        parsed = SCHEMAS[kind].model_validate(params or {})
    except ValidationError as err:
        raise InvalidParams(describe(err)) from None
    if isinstance(parsed, IngestParams) and not settings.allow_path_sources and not _is_id(parsed.source):
        raise InvalidParams("source: expected the artifact id of an upload; paths on the workers "
                            "are not accepted here (MCVAE_ALLOW_PATH_SOURCES=false)")
    if isinstance(parsed, SampleParams) and parsed.n > settings.max_sample_n:
        raise InvalidParams(
            f"n: at most {settings.max_sample_n} scans per sampling job (MCVAE_MAX_SAMPLE_N), got {parsed.n}")
    check_budget(parsed, settings)
    return parsed


def check_budget(params: _Params, settings: Settings, n_scans: int | None = None) -> None:
    """The deployment's job-size limits (models/budget.py) on a train or augment job: the
    gateway's check at submit and the worker's before it runs. ``n_scans``: the scans the job
    trains on, when known (a train job's steps per epoch). InvalidParams naming the field, the
    setting and the limit; nothing for the other kinds or for configs refused elsewhere."""
    if isinstance(params, TrainParams):
        est, fields = train_estimate(params.preprocess, params.model, params.train, n_scans), TRAIN_FIELDS
    elif isinstance(params, AugmentParams):
        est, fields = augment_estimate(params.augment_config()), AUGMENT_FIELDS
    else:
        return
    if est is not None:
        try:
            check(est, settings.job_limits, fields)
        except ValueError as err:
            raise InvalidParams(str(err)) from None


def estimated_output_bytes(params: _Params) -> int:
    """A lower bound on what a job will store: one model's weights for a train or augment job
    (an augmentation trains one per class, and writes scans too); 0 where unknown before it runs."""
    if isinstance(params, TrainParams):
        est = train_estimate(params.preprocess, params.model, params.train)
    elif isinstance(params, AugmentParams):
        est = augment_estimate(params.augment_config())
    else:
        return 0
    return model_bytes(est) if est is not None else 0


def queue_for(kind: str, params: _Params, settings: Settings) -> str:
    """gpu: training and large sampling; cpu: ingest, evaluation and small sampling."""
    if kind in ("train", "augment"):
        logical = "gpu"
    elif isinstance(params, SampleParams):
        logical = "gpu" if params.n >= settings.gpu_sample_min else "cpu"
    else:
        logical = "cpu"
    return settings.queue_name(logical)
