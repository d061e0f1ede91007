"""How big a job is, estimated before it runs, and the one rule that bounds it (issue 23, item 1).

Torch-free (pydantic and the torch-free configs only), so the gateway checks a job at submit and the worker checks it again
before running it, with the same numbers and the same messages. The estimate is analytic, from
the configs alone (no network is built):

- voxels per scan: the preprocessing grid (``target_shape``);
- parameters: the networks ``models.networks`` / ``models.hierarchy`` build for the arch, its
  channels, hidden widths and latent sizes (within about 15 % of the real count: the main
  weight matrices and kernels are counted, small biases and norms are not);
- activation memory: float32 values kept for the backward pass of one minibatch, rough (each
  layer's output, its activation and its gradient);
- optimiser steps per trained model: ``pretrain_steps + mcmc_steps`` for an augmentation,
  ``(pretrain_epochs + epochs) x steps per epoch`` for a train job (one step per epoch while
  the dataset's size is unknown, so the submit-time figure is a lower bound).

The limits are per deployment (``workers.settings``: MCVAE_MAX_VOXELS, MCVAE_MAX_PARAMETERS,
MCVAE_MAX_ACTIVATION_GIB, MCVAE_MAX_STEPS, MCVAE_MAX_BATCH_SIZE); a job past one is refused
with a message naming the setting and the limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from pydantic import ValidationError

from .config import ModelConfig, TrainConfig
from .data.options import PreprocessConfig
from .options import AugmentConfig

GiB = 1 << 30
FLOAT_BYTES = 4
# Values kept per layer output while training: the output, its activation, and its gradient.
KEPT_PER_OUTPUT = 3


@dataclass(frozen=True)
class Limits:
    """One deployment's bounds on a job; each field is named by its environment variable."""

    max_voxels: int
    max_parameters: int
    max_activation_bytes: int
    max_steps: int
    max_batch_size: int


@dataclass(frozen=True)
class Estimate:
    shape: tuple[int, ...]  # the preprocessing grid
    voxels: int
    parameters: int
    activation_bytes: int  # one minibatch, training
    steps: int  # optimiser steps per trained model
    batch_size: int

    def as_dict(self) -> dict[str, int]:
        return {"shape": list(self.shape), "voxels": self.voxels, "parameters": self.parameters,
                "activation_bytes": self.activation_bytes, "steps": self.steps, "batch_size": self.batch_size}


class OverBudget(ValueError):
    """A job past one of the deployment's limits; the message names the field, the setting and
    the limit."""


@dataclass(frozen=True)
class Network:
    """What the estimate needs of a ModelConfig / ModelChoice (data_shape less the channel)."""

    shape: tuple[int, ...]
    arch: str = "conv"
    channels: tuple[int, ...] = (16, 32, 64)
    hidden: tuple[int, ...] = (256,)
    latent_dims: tuple[int, ...] = (16,)
    latent_channels: tuple[int, ...] = ()
    n_classes: int = 0


def network_size(net: Network) -> tuple[int, int]:
    """(parameters, values per item kept for backward): an analytic count of the networks."""
    voxels = math.prod(net.shape)
    dims = len(net.shape)
    kernel = 3 ** dims
    latent = sum(net.latent_dims)
    hidden = tuple(net.hidden) or (256,)
    if net.arch == "linear":
        # encoder head voxels -> 2 x latent (mean, scale), decoder latent -> voxels
        return 3 * voxels * latent + 2 * voxels, 2 * voxels
    if net.arch == "mlp":
        widths = (voxels, *hidden)
        pairs = sum(a * b for a, b in pairwise(widths))
        head = hidden[-1] * 3 * latent  # q's parameters, and the decoder's first layer
        return 2 * pairs + head + 2 * voxels, 2 * voxels + 2 * sum(hidden)
    # conv and hconv: one strided conv per stage down, one transposed conv per stage up
    channels = tuple(net.channels) or (16,)
    factor = 2 ** len(channels)
    bottleneck = math.prod(max(1, s // factor) for s in net.shape)
    ins = (1, *channels)
    convs = sum(kernel * a * b for a, b in pairwise(ins))
    features = channels[-1] * bottleneck
    # stage outputs: stage i has voxels / 2^(dims (i+1)) positions and channels[i] values each
    stage_values = sum(c * voxels // 2 ** (dims * (i + 1)) for i, c in enumerate(channels))
    if net.arch == "hconv":
        top = latent
        n_maps = len(net.latent_channels)
        widths = list(reversed(channels))
        maps = sum(kernel * (3 * widths[k] * c + 2 * widths[k] * c) + 2 * kernel * widths[k] ** 2
                   for k, c in enumerate(reversed(net.latent_channels)))
        params = (2 * convs + features * (hidden[-1] + 1) + hidden[-1] * 2 * top
                  + (top + net.n_classes) * features + maps + 2 * voxels)
        map_values = sum(c * voxels // 2 ** (dims * (len(channels) - k))
                         for k, c in enumerate(reversed(net.latent_channels)))
        return params, 2 * voxels + 2 * stage_values + 4 * map_values + (n_maps > 0) * stage_values
    # conv: features -> hidden -> hidden -> 2 x latent (q), and a linear stem latent -> features
    h = hidden[-1]
    params = 2 * convs + features * h + h * h + 2 * h * latent + latent * features + 2 * voxels
    return params, 2 * voxels + 2 * stage_values


def estimate(net: Network, batch_size: int, steps: int) -> Estimate:
    params, kept = network_size(net)
    return Estimate(shape=tuple(net.shape), voxels=math.prod(net.shape), parameters=params,
                    activation_bytes=batch_size * kept * FLOAT_BYTES * KEPT_PER_OUTPUT,
                    steps=steps, batch_size=batch_size)


def check(est: Estimate, limits: Limits, fields: dict[str, str]) -> None:
    """Raise OverBudget for the first figure past its limit. ``fields``: what each figure is
    called in the job's own terms (``batch_size`` -> ``train.batch_size``), for the message."""
    def over(figure: str, value: str, limit: str, setting: str) -> OverBudget:
        return OverBudget(f"{fields[figure]}: {value} is above this deployment's limit {limit} ({setting})")

    if est.voxels > limits.max_voxels:
        raise over("voxels", f"{shape_text(est.shape)} voxels per scan", str(limits.max_voxels), "MCVAE_MAX_VOXELS")
    if est.batch_size > limits.max_batch_size:
        raise over("batch_size", str(est.batch_size), str(limits.max_batch_size), "MCVAE_MAX_BATCH_SIZE")
    if est.steps > limits.max_steps:
        raise over("steps", f"{est.steps} optimiser steps", str(limits.max_steps), "MCVAE_MAX_STEPS")
    if est.parameters > limits.max_parameters:
        raise over("parameters", f"about {est.parameters} parameters", str(limits.max_parameters),
                   "MCVAE_MAX_PARAMETERS")
    if est.activation_bytes > limits.max_activation_bytes:
        raise over("activation_bytes", f"about {est.activation_bytes / GiB:.1f} GiB of activations per batch",
                   f"{limits.max_activation_bytes / GiB:g} GiB", "MCVAE_MAX_ACTIVATION_GIB")


def model_bytes(est: Estimate) -> int:
    """What one trained model's weights take on disk (float32): the part of a job's output the
    estimate knows before any scan is read (a per-lab storage quota's submit-time check)."""
    return est.parameters * FLOAT_BYTES


def steps_per_epoch(n_scans: int | None, batch_size: int) -> int:
    """Minibatches in one pass over ``n_scans`` (1 while the count is unknown: a lower bound)."""
    if not n_scans:
        return 1
    return -(-n_scans // max(1, min(batch_size, n_scans)))


def shape_text(shape: Sequence[int]) -> str:
    return " x ".join(str(s) for s in shape) + f" = {math.prod(shape)}"


# What each figure is called in a job's own terms, for the messages.
TRAIN_FIELDS = {"voxels": "preprocess.target_shape", "batch_size": "train.batch_size",
                "steps": "train.pretrain_epochs + train.epochs", "parameters": "model",
                "activation_bytes": "train.batch_size"}
AUGMENT_FIELDS = {"voxels": "config.preprocess.target_shape", "batch_size": "config.train.batch_size",
                  "steps": "config.pretrain_steps + config.mcmc_steps", "parameters": "config.model",
                  "activation_bytes": "config.train.batch_size"}


def train_estimate(preprocess: Mapping[str, Any], model: Mapping[str, Any], train: Mapping[str, Any],
                   n_scans: int | None = None) -> Estimate | None:
    """A train job's estimate from its params (``workers.params.TrainParams``); None when the
    preprocess or train config is invalid (the worker refuses it, naming the field, before any
    work). An invalid model config is estimated with ModelConfig's defaults for the grid: the
    worker refuses it too, before reading a scan."""
    try:
        pre = PreprocessConfig(**preprocess)
        cfg = TrainConfig(**{k: v for k, v in train.items() if k != "device"})
    except (ValidationError, TypeError):
        return None
    if pre.target_shape is None:
        return None  # the native size is known once the scans are read (MCVAE_MAX_SCAN_VOXELS bounds it)
    shape = (1, *pre.target_shape)
    try:
        net = ModelConfig(**{"data_shape": shape, **model})
    except (ValidationError, TypeError):
        net = ModelConfig.model_construct(data_shape=shape)
    network = Network(shape=tuple(net.data_shape[1:]), arch=net.arch, channels=tuple(net.channels),
                      hidden=tuple(net.hidden), latent_dims=tuple(net.latent_dims),
                      latent_channels=tuple(net.latent_channels), n_classes=net.n_classes)
    batch = min(cfg.batch_size, n_scans) if n_scans else cfg.batch_size
    steps = (cfg.pretrain_epochs + cfg.epochs) * steps_per_epoch(n_scans, cfg.batch_size)
    est = estimate(network, batch, steps)
    # the batch limit is on what was asked for, not on what a small dataset makes of it
    return Estimate(**{**est.__dict__, "batch_size": cfg.batch_size})


def augment_estimate(config: Mapping[str, Any]) -> Estimate | None:
    """An augmentation's estimate from its AugmentConfig settings (a profile's already merged
    in), per trained model; None when the config is invalid (refused elsewhere, naming the field)."""
    try:
        cfg = AugmentConfig(**config)
    except (ValidationError, TypeError):
        return None
    pre = cfg.preprocess or PreprocessConfig()
    if pre.target_shape is None:
        return None  # the native size is known once the scans are read (MCVAE_MAX_SCAN_VOXELS bounds it)
    m = cfg.model
    network = Network(shape=tuple(pre.target_shape), arch=m.arch, channels=tuple(m.channels),
                      hidden=tuple(m.hidden), latent_dims=tuple(m.latent_dims),
                      latent_channels=tuple(m.latent_channels))
    return estimate(network, cfg.train.batch_size, cfg.pretrain_steps + cfg.mcmc_steps)
