"""Request and response bodies of the REST API (pydantic), apart from the database records.

Responses never carry server paths, key digests or patient data: ids, counts, states,
configurations and metrics only.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.profiles import PROFILE_NAMES

JobState = Literal["queued", "running", "succeeded", "partial", "failed", "cancelled"]
JobKind = Literal["ingest", "train", "sample", "augment", "evaluate"]
Config = dict[str, Any]
MAX_SEED = 2**63 - 1

# Ids are checked for shape before any lookup: a NUL or a control character must be a 422 here,
# not a database error later.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"  # no control characters (names end up in logs of others)
ResourceId = Annotated[str, Field(max_length=200, pattern=ID_PATTERN)]
Name = Annotated[str, Field(max_length=200, pattern=TEXT_PATTERN)]
Label = Annotated[str, Field(max_length=128, pattern=TEXT_PATTERN)]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors -------------------------------------------------------------------------------------
class FieldError(_Out):
    loc: list[str] = Field(description="where: body, query, path or header, then the field")
    msg: str
    type: str


class ErrorBody(_Out):
    """Every 4xx and 5xx body."""

    detail: str = Field(description="what was wrong, naming the field, file or limit")
    code: str = Field(description="stable machine-readable kind, e.g. not_found, invalid, too_large")
    request_id: str | None = Field(None, description="the X-Request-ID of the request, for support")
    errors: list[FieldError] | None = Field(None, description="each invalid field (422 only)")
    job_id: str | None = Field(None, description="the job concerned, when there is one")


# -- jobs ---------------------------------------------------------------------------------------
class Job(_Out):
    id: str
    kind: JobKind
    state: JobState
    stage: str = Field(description="what it is doing now, e.g. 'training AD'")
    progress: float = Field(ge=0, le=1)
    params: Config = Field(description="what the job was asked to do")
    metrics: Config = Field(description="figures so far (training curves, counts, timings)")
    artifacts: list[str] = Field(description="ids of what it produced")
    error: str | None = Field(description="why it failed, when it did")
    attempts: int = Field(description="runs so far (a lost worker's job is resumed elsewhere)")
    cancel_requested: bool
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    updated_at: dt.datetime
    heartbeat_at: dt.datetime | None = Field(None, description="last sign of life of its worker (running jobs)")
    stale: bool = Field(False, description=(
        "running, but its worker has missed its heartbeats (probably dead): the job is re-queued "
        "and resumed elsewhere once the heartbeat is MCVAE_LEASE_SECONDS old"))
    result_url: str | None = Field(description="where to download the result, once it succeeded")
    events_url: str


class JobList(_Out):
    items: list[Job]
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page; null on the last")


class JobEvent(_Out):
    """The data of one Server-Sent Event of ``GET /v1/jobs/{id}/events``."""

    id: int
    at: dt.datetime
    level: str
    stage: str
    progress: float | None
    message: str
    state: JobState | None = Field(None, description="set on the final ('end') event")


# -- datasets -----------------------------------------------------------------------------------
DatasetState = Literal["ingesting", "ready", "failed", "cancelled"]


class Dataset(_Out):
    id: str
    name: str | None
    state: DatasetState
    job_id: str = Field(description="the ingest job")
    created_at: dt.datetime
    n_scans: int | None
    classes: dict[str, int] = Field(description="scans per class")
    spatial_dims: int | None
    summary: Config | None = Field(description="shapes, spacings, orientations, intensity ranges")
    warnings: list[str]
    error: str | None = Field(description="why ingest failed (names the file)")


class DatasetList(_Out):
    items: list[Dataset]
    limit: int
    offset: int
    total: int


# -- models ---------------------------------------------------------------------------------------
ModelState = Literal["training", "ready", "failed", "cancelled"]


class TrainRequest(_In):
    """Train one MCMC-refined VAE on a dataset (optionally one class of it)."""

    dataset: ResourceId = Field(examples=["dataset-3f2a..."])
    label: Label | None = Field(None, description="train on this class only")
    name: Name | None = None
    preprocess: Config = Field(default_factory=dict, description="models.data.PreprocessConfig")
    model: Config = Field(default_factory=dict, description="models.ModelConfig, less data_shape")
    sampler: Config = Field(default_factory=dict, description="models.SamplerConfig")
    train: Config = Field(default_factory=dict, description="models.TrainConfig, less device")
    checkpoint_every: int | None = Field(None, ge=1, le=1_000_000)


class Model(_Out):
    id: str
    name: str | None
    state: ModelState
    progress: float = Field(ge=0, le=1)
    job_id: str = Field(description="the train or augment job that made it")
    dataset: str | None
    label: str | None = Field(description="the class it was trained on")
    created_at: dt.datetime
    config: Config = Field(description="model, sampler, preprocess and train configuration")
    metrics: Config = Field(description="final figures of training; a shared model of an augmentation: "
                            "one entry per class it drew, keyed by class")
    curves: list[Config] = Field(description="one record per epoch: loss, elbo, acceptance, ...")
    error: str | None


class ModelList(_Out):
    items: list[Model]
    limit: int
    offset: int
    total: int


class SampleRequest(_In):
    n: int = Field(1, ge=1, description="how many scans; small n is answered with the scans")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    label: Label | None = Field(None, description=(
        "the class to draw: required for a shared (class-conditional) model of an augmentation "
        "with config.model_scope 'shared', one of its classes; optional for a per-class model "
        "(must then be its class)"))
    wait: bool = Field(True, description="false: always answer 202 with the job")


# -- augmentations ------------------------------------------------------------------------------------
# One syntax at both doors: the strings are parsed by models.targets.parse_target (through
# workers.params), the rule the CLI's --target uses.
Target = (Annotated[float, Field(gt=0, le=100, description="ratio of the majority count")]
          | Annotated[str, Field(max_length=2000, pattern=TEXT_PATTERN, examples=["balance", "AD=40"],
                                 description="'balance', a ratio such as '0.5', or the CLI's counts "
                                             "'AD=40,MCI=10' (synthetic scans to ADD per class)")]
          | dict[Label, Annotated[int, Field(ge=0)]])


class AugmentRequest(_In):
    dataset: ResourceId
    target: Target = Field("balance", description=(
        "'balance' (every class up to the largest, counted on the train split), a ratio of the "
        "majority class count (0.5: every class up to half of it), or synthetic scans to add per "
        "class: {\"AD\": 40} or \"AD=40\""))
    config: Config = Field(default_factory=dict, description=(
        "models.options.AugmentConfig, checked at submit (an unknown field or a wrong type is a "
        "422): preprocess, model, sampler, train (less device), pretrain_steps, mcmc_steps, seed, "
        "near_copies ('replace': near-copies of training scans are redrawn, never delivered; "
        "'keep'), near_copy_fraction, max_redraws, retrains (a model that learned only the class mean "
        "is trained again from a fresh seed), fine_detail (generator aggregate: 'none', "
        "the default: decoder means; 'nearest': each new scan gets the fine detail of the training scan "
        "whose reconstruction is nearest it), variation_scale, "
        "real_scans ('preprocessed': real scans in the result on the synthetic scans' grid and scale; "
        "'raw': byte copies), model_scope "
        "('shared', the default: one class-conditional model on every class's train scans; "
        "'per_class': one model per minority class; 'transfer': the same, each started from a base "
        "model of every class's train scans), generator ('variation', the default: each train subject of "
        "the class moved along the difference of two majority subjects, derived from that subject; "
        "'aggregate': new latents of the class, the default with per_class and transfer; "
        "'counterfactual': each majority train subject moved to the class, derived from that "
        "subject; 'interpolation': between two train subjects of the class; all but aggregate need "
        "model_scope 'shared'), abduction ('mcmc' or 'mean'), check_utility (a k-fold self-check on the train "
        "split: do the synthetic scans help a classifier? reported in the result and the events), "
        "qc (quality-control thresholds; skip_bad_scans)"))
    profile: Annotated[str, Field(max_length=64, pattern=TEXT_PATTERN)] | None = Field(
        None, examples=list(PROFILE_NAMES), description=(
            "a resolution profile: " + ", ".join(PROFILE_NAMES) + " (models/profiles.py: grid, "
            "spacing, network widths, step budget). Its settings lie under config's own, key by "
            "key, as with the CLI's --profile; an unknown name is a 422"))
    name: Name | None = None


class Augmentation(_Out):
    id: str = Field(description="the augment job's id")
    name: str | None
    dataset: str | None
    target: Any
    profile: str | None = Field(None, description="the resolution profile it was asked for")
    state: JobState
    stage: str
    progress: float = Field(ge=0, le=1)
    real_counts: dict[str, int] | None = Field(description="real scans per class (all splits)")
    train_counts: dict[str, int] | None = Field(None, description=(
        "real scans per class that trained the generators and that the balance counts: the "
        "train split when the dataset has a split column, else every real scan"))
    synthetic_counts: dict[str, int] | None = Field(description="synthetic scans delivered per class")
    near_copies_replaced: int | None = Field(None, description=(
        "synthetic scans that were nearer a training scan than the near-copy threshold and were "
        "replaced by new draws (none is delivered unless config.near_copies is 'keep')"))
    models: dict[str, str] = Field(description="class -> model id, once trained")
    metrics: Config
    error: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
    result_url: str | None
    events_url: str


class AugmentationList(_Out):
    items: list[Augmentation]
    limit: int
    offset: int
    next_offset: int | None


# -- health -------------------------------------------------------------------------------------------
class Health(_Out):
    status: Literal["ok"]


class Check(_Out):
    ok: bool
    detail: str


class Readiness(_Out):
    status: Literal["ready", "not ready"]
    checks: dict[str, Check]


# -- usage --------------------------------------------------------------------------------------
class Usage(_Out):
    """Storage held by the lab's jobs (artifact payloads as recorded in their manifests)."""

    lab: str
    total_bytes: int
    bytes: dict[str, int] = Field(description=(
        "per kind: datasets, models, outputs, reports, checkpoints (of unfinished, failed or "
        "cancelled jobs, until the sweeper's retention), uploads (copies awaiting ingest)"))
