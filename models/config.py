"""Typed configuration for models, samplers and training: the one place their knobs live.

Configs are pydantic models, so a bad value raises ``pydantic.ValidationError`` (a subclass of
``ValueError``) whose message names the offending field.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Config):
    """A VAE: data shape (channel first), networks, latent layers, likelihood.

    ``latent_dims`` lists one size per latent layer, bottom (closest to the data) first:
    ``[8]`` is a plain VAE and ``[16, 8, 4]`` a three-layer hierarchy whose top layer has 4 units.
    """

    data_shape: tuple[int, ...] = Field(description="channel-first shape of one item, e.g. (1, 32, 32, 32)")
    arch: Literal["linear", "mlp", "conv", "hconv"] = "conv"
    latent_dims: list[int] = Field(default_factory=lambda: [16])
    # hconv (models/hierarchy.py): spatial latent maps of the top-down path, one entry (its
    # channels) per map, bottom (finest) first. The top map lives at the encoder's bottleneck
    # resolution, each one below at twice the resolution of the one above; ``latent_dims`` then
    # holds one entry, the size of the vector latent above all maps.
    latent_channels: tuple[int, ...] = ()
    # hconv: where new scans' latent maps come from (with ``sampling`` "aggregate"). "prior": the
    # top-down prior p(z_k | h) given the layers above (the top vector from ``sampling``), its
    # scale times ``map_temperature``; "aggregate": the diagonal Gaussian fitted to the training
    # scans' map posteriors (it ignores the maps' spatial correlations, so its draws decode to
    # high-frequency noise); "joint": every layer at once from the Gaussian moment-matched to the
    # aggregate posterior, with the covariance the law of total covariance gives: the mean
    # posterior variance (diagonal) plus the spread of the scans' posterior means (rank below the
    # number of scans, kept up to ``sampling_rank`` principal directions), so a draw keeps the
    # spatial structure the training scans' maps share (models/hierarchy.py).
    map_sampling: Literal["prior", "aggregate", "joint"] = "prior"
    map_temperature: float = Field(1.0, ge=0)
    sampling_rank: int = Field(64, ge=1, description="map_sampling 'joint': principal directions "
                               "of the posterior means kept (exact up to sampling_rank + 1 scans)")
    # Class-conditional when > 0: labels 0..n_classes-1 enter the encoder, the top layer's prior
    # (a learned mean and scale per class) and the decoder (models/conditional.py).
    n_classes: int = Field(0, ge=0)
    # Class-conditional models: the decoder's output is a residual around a per-voxel offset per
    # class (the data's mean plus a learned class term started at the class's mean difference),
    # so a class's mean shift (the enlarged ventricles of a minority class) is held by the
    # likelihood directly instead of having to pass through the latent code and the decoder.
    class_offset: bool = True
    likelihood: Literal["gaussian", "logistic", "bernoulli"] = "gaussian"
    parameterization: Literal["centered", "noncentered"] = "noncentered"
    # conv: channels per down-sampling stage (each halves every spatial size).
    channels: tuple[int, ...] = (16, 32, 64)
    # mlp: exactly the hidden widths of the encoder (in order) and the decoder (reversed), e.g.
    # (200, 200) is 784-200-200-(q's parameters) and z-200-200-784; the last width is also the
    # width of the hierarchical VAE's per-layer networks.
    hidden: tuple[int, ...] = (256,)
    # mlp (and the hierarchy's small networks): activation between hidden layers, and how their
    # linear layers start ("torch": torch's default; "xavier": Glorot-uniform, zero bias, as in
    # TensorFlow; "kaiming": He-normal, zero bias).
    activation: Literal["silu", "relu", "elu", "gelu", "tanh", "softplus"] = "silu"
    init: Literal["torch", "xavier", "kaiming"] = "torch"
    # gaussian / logistic: initial global log-variance (log-scale for logistic) of p(x | z).
    obs_log_var: float = -3.0
    learn_obs_var: bool = True
    # Where new scans' latents come from. "prior": u ~ p(u). "aggregate": a Gaussian moment-matched
    # to the aggregate posterior (1/N) sum_i q(u | x_i) of the training scans, fitted when training
    # ends (ex-post density estimation). With few training scans the posteriors sit far outside
    # the prior's typical set (the KL term is weak against thousands of voxels), so prior draws
    # decode to near-identical average scans; aggregate draws vary as much as real scans do.
    sampling: Literal["prior", "aggregate"] = "aggregate"

    @field_validator("data_shape")
    @classmethod
    def _shape(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) < 2 or any(s < 1 for s in v):
            raise ValueError("data_shape must be (channels, *spatial) with positive sizes")
        return v

    @field_validator("latent_dims")
    @classmethod
    def _latents(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("latent_dims must list at least one latent layer size")
        if any(d < 1 for d in v):
            raise ValueError("latent_dims entries must be positive")
        return v

    @field_validator("channels", "hidden")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(c < 1 for c in v):
            raise ValueError("must be a non-empty list of positive widths")
        return v

    @model_validator(mode="after")
    def _conv_fits(self) -> ModelConfig:
        if self.arch == "hconv":
            if len(self.latent_dims) != 1:
                raise ValueError("latent_dims: hconv takes one entry, the top vector latent's size; "
                                 "the spatial layers are latent_channels")
            if len(self.latent_channels) > len(self.channels):
                raise ValueError(f"latent_channels: at most {len(self.channels)} maps (one per "
                                 f"coarse resolution, len(channels)), got {len(self.latent_channels)}")
            if any(c < 1 for c in self.latent_channels):
                raise ValueError("latent_channels entries must be positive")
        elif self.latent_channels:
            raise ValueError("latent_channels: spatial latent maps need arch 'hconv'")
        if self.arch in ("conv", "hconv"):
            spatial = self.data_shape[1:]
            if len(spatial) not in (2, 3):
                raise ValueError(
                    f"data_shape: conv networks need 2-D or 3-D data, got {len(spatial)} spatial dims"
                )
        return self

    @property
    def spatial_dims(self) -> int:
        return len(self.data_shape) - 1

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """The spatial sizes the networks work on. The conv networks halve every size once per
        entry of ``channels``, so they pad the data at the far end of each axis up to the next
        multiple of 2 ** len(channels) and crop their output back: any size works (28 x 28 runs
        on a 32 x 32 grid) and the model's input and output keep the data's own shape."""
        spatial = tuple(self.data_shape[1:])
        if self.arch not in ("conv", "hconv"):
            return spatial
        factor = 2 ** len(self.channels)
        return tuple(-(-s // factor) * factor for s in spatial)

    @property
    def bottleneck_shape(self) -> tuple[int, ...]:
        """conv, hconv: the spatial sizes after the last down-sampling stage."""
        factor = 2 ** len(self.channels)
        return tuple(s // factor for s in self.grid_shape)

    @property
    def layer_sizes(self) -> list[int]:
        """Units per latent layer in chain space, bottom first (a map counts all its voxels)."""
        if self.arch != "hconv":
            return list(self.latent_dims)
        bottleneck = self.bottleneck_shape
        n_maps = len(self.latent_channels)
        sizes = [c * math.prod(b * 2 ** (n_maps - 1 - k) for b in bottleneck)
                 for k, c in enumerate(self.latent_channels)]
        return sizes + list(self.latent_dims)

    @property
    def latent_dim(self) -> int:
        return sum(self.layer_sizes)


class SamplerConfig(_Config):
    """An MCMC kernel that refines encoder draws, and how its proposal is tuned."""

    kind: Literal["none", "mala", "hmc"] = "mala"
    adaptation: Literal["entropy", "dual_averaging", "fixed"] = "entropy"
    preconditioner: Literal["diag", "full", "lowrank"] = "diag"
    rank: int = Field(4, ge=1, description="rank of the low-rank part (lowrank preconditioner)")
    unit_det_c: bool = Field(
        True, description="entropy adaptation: C has unit determinant, so it only shapes the proposal "
        "and h alone scales it (h^2 C C^T is all the proposal depends on; with both free, h and C "
        "drifted apart and the acceptance sat off target). False: the paper's free C")
    n_steps: int = Field(5, ge=0, description="MCMC steps per encoder draw")
    n_leapfrog: int = Field(5, ge=1, description="leapfrog steps per HMC proposal")
    step_size: float = Field(0.1, gt=0, description="initial (or fixed) step size h")
    target_accept: float | None = Field(
        None, gt=0, lt=1, description="target mean acceptance; default 0.574 (MALA), 0.65 (HMC)"
    )
    warmup_steps: int = Field(
        30, ge=0, description="entropy adaptation: transitions of a search that sets h once, on the "
        "first batch of phase 2, before the speed measure takes over (0: start from step_size)")
    beta_init: float = Field(1.0, gt=0)
    beta_balance: bool = Field(
        True, description="entropy adaptation in training: after the warm start, set beta so that "
        "the warm-started h is a stationary point of the speed measure (else beta starts at beta_init)")
    beta_min: float = Field(1e-3, gt=0)
    beta_max: float = Field(100.0, gt=0)
    beta_rate: float = Field(0.05, ge=0, description="rho in beta <- beta exp(rho (alpha - target))")
    lr: float = Field(1e-2, gt=0, description="entropy adaptation: Adam learning rate of (h, C)")
    accept_gain: float | None = Field(
        None, ge=0, description="entropy adaptation: after every adapting transition, log h += "
        "accept_gain * (mean acceptance - target), an acceptance-controlled correction of the speed "
        "measure's step; default 0.3 for MALA, 0 for HMC (whose acceptance is not monotone in h, "
        "so the correction could chase it); 0: the speed measure alone")
    update: Literal["per_step", "per_batch"] = Field(
        "per_step", description="entropy adaptation in training: one optimiser step on (h, C) after "
        "every MCMC transition (per_step), or one per minibatch on the mean loss of its K transitions "
        "(per_batch, the rule before issue 12)")

    @model_validator(mode="after")
    def _beta_bounds(self) -> SamplerConfig:
        if self.beta_min > self.beta_max:
            raise ValueError("beta_min must not exceed beta_max")
        if not self.beta_min <= self.beta_init <= self.beta_max:
            raise ValueError("beta_init must lie within [beta_min, beta_max]")
        return self

    @property
    def step_gain(self) -> float:
        if self.accept_gain is not None:
            return self.accept_gain
        return 0.0 if self.kind == "hmc" else 0.3

    @property
    def accept_target(self) -> float:
        if self.target_accept is not None:
            return self.target_accept
        return 0.65 if self.kind == "hmc" else 0.574


class TrainConfig(_Config):
    """Two-phase training (DESIGN.md section 2)."""

    pretrain_epochs: int = Field(10, ge=0, description="phase 1: plain ELBO for encoder and decoder")
    epochs: int = Field(10, ge=0, description="phase 2: encoder ELBO, decoder on MCMC end states")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0, description="encoder and decoder learning rate")
    sampler_lr: float | None = Field(
        None, gt=0, description="deprecated: set SamplerConfig.lr; when given, it overrides it")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads while training (torch.set_num_threads); None "
        "leaves the process's setting. On a loaded machine fewer threads are often faster")
    device: str = "cpu"
    amp: bool = Field(False, description="bf16 autocast for network passes on CUDA")
    channels_last: bool | None = Field(
        None, description="channels-last memory format (torch.channels_last_3d for 3-D scans, "
        "torch.channels_last for 2-D) for the networks' weights and the minibatches while training; "
        "None: on for CUDA with the conv archs (conv, hconv), off otherwise. The values computed are "
        "the same either way (up to float rounding); on CUDA the cuDNN kernels for it are usually faster")
    seed: int = 0
    grad_clip: float | None = Field(100.0, gt=0)
    class_balance: bool = Field(
        True, description="class-conditional models: draw each minibatch item's class uniformly (items "
        "drawn with replacement, weight 1 / class count), so a minority class of a few scans is seen as "
        "often as the majority instead of once in a dozen batches; an epoch is still len(data) items")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")

    @field_validator("sampler_lr")
    @classmethod
    def _deprecated_sampler_lr(cls, v: float | None) -> float | None:
        if v is not None:
            warnings.warn("TrainConfig.sampler_lr is deprecated: the sampler's learning rate is "
                          "SamplerConfig.lr", DeprecationWarning, stacklevel=2)
        return v
