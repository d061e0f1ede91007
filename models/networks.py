"""Encoder and decoder networks: ``linear``, ``mlp`` and MONAI ``conv`` (2-D and 3-D).

Encoders map x (B, *data_shape) to a feature vector (B, F); decoders map a latent vector (B, d)
to the likelihood's parameter tensor ``out`` (B, *data_shape).

Two rules hold for every network here:
- no batch norm (nor anything else that mixes batch items): each MCMC chain targets one scan's
  posterior, which must not depend on the other scans in the batch;
- the MLP's activation and initialisation are ``ModelConfig.activation`` / ``.init``. SiLU (the
  default) is smooth, so grad log p(x | z), which MALA and HMC follow, is continuous in z; ReLU
  (the speed-measure paper's choice) gives piecewise-constant decoder Jacobians, which the
  Metropolis correction still handles. The conv networks use MONAI's SWISH (= SiLU).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from monai.networks.blocks import Convolution
from torch import nn

from .config import ModelConfig

ACTIVATION = nn.SiLU
MONAI_ACTIVATION = "SWISH"  # x * sigmoid(x), the same function as nn.SiLU
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "tanh": nn.Tanh,
    "softplus": nn.Softplus,
}


def mlp(
    in_dim: int,
    widths: tuple[int, ...] | list[int],
    out_dim: int,
    final_activation: bool = False,
    activation: str = "silu",
) -> nn.Sequential:
    """Linear layers through ``widths`` to ``out_dim``, ``activation`` between (and after, if asked)."""
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_dim, width), act()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    if final_activation:
        layers.append(act())
    return nn.Sequential(*layers)


@torch.no_grad()
def initialize_linear(module: nn.Module, scheme: str) -> None:
    """Re-initialise every nn.Linear in ``module``: ``torch`` keeps torch's default
    (kaiming-uniform with a=sqrt(5), i.e. U(+-1/sqrt(fan_in)), biases likewise); ``xavier`` is
    Glorot-uniform weights and zero biases (TensorFlow/Keras's default, the paper's code);
    ``kaiming`` is He-normal for ReLU-like nets, zero biases."""
    if scheme == "torch":
        return
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            if scheme == "xavier":
                nn.init.xavier_uniform_(layer.weight)
            elif scheme == "kaiming":
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            else:
                raise ValueError(f"init: unknown scheme {scheme!r}")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _n_voxels(cfg: ModelConfig) -> int:
    return math.prod(cfg.data_shape)


class PadToGrid(nn.Module):
    """Zero-pads (B, C, *data spatial) at the far end of each axis to ``cfg.grid_shape``, the
    sizes the strided convolutions can halve ``len(channels)`` times (a no-op when they match).
    Zero is the background of the preprocessed [0, 1] scale."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        extra = [g - s for g, s in zip(cfg.grid_shape, cfg.data_shape[1:])]
        # F.pad lists (before, after) pairs from the last axis backwards
        self.padding = [p for e in reversed(extra) for p in (0, e)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x, self.padding) if any(self.padding) else x


class CropToData(nn.Module):
    """Crops a (B, C, *grid) output back to the data's own spatial shape (PadToGrid's inverse)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.index = (slice(None), slice(None), *(slice(0, s) for s in cfg.data_shape[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.index]


def _bottleneck_spatial(cfg: ModelConfig) -> tuple[int, ...]:
    return cfg.bottleneck_shape


def _conv(cfg: ModelConfig, c_in: int, c_out: int, **kwargs) -> Convolution:
    return Convolution(
        spatial_dims=cfg.spatial_dims,
        in_channels=c_in,
        out_channels=c_out,
        kernel_size=3,
        act=MONAI_ACTIVATION,
        norm=None,
        **kwargs,
    )


def build_encoder(cfg: ModelConfig) -> tuple[nn.Module, int]:
    """The encoder network and its feature size F."""
    if cfg.arch == "linear":
        # The features are x itself, so whatever affine head follows keeps the encoder affine.
        return nn.Flatten(), _n_voxels(cfg)
    if cfg.arch == "mlp":
        # Exactly the hidden layers ``hidden`` (each followed by the activation); the VAE's
        # affine head maps the last one to q's parameters.
        widths = cfg.hidden
        return nn.Sequential(
            nn.Flatten(), mlp(_n_voxels(cfg), widths[:-1], widths[-1], True, cfg.activation)
        ), widths[-1]
    if cfg.arch == "conv":
        stages, c_in = [], cfg.data_shape[0]
        for c_out in cfg.channels:
            stages.append(_conv(cfg, c_in, c_out, strides=2))  # halves every spatial size
            c_in = c_out
        features = cfg.channels[-1] * math.prod(_bottleneck_spatial(cfg))
        # "pad" by name, first: the stages keep the parameter names "0", "1", ... that saved
        # models (from before the padding) use.
        named = [("pad", PadToGrid(cfg))] + [(str(k), m) for k, m in enumerate([*stages, nn.Flatten()])]
        return nn.Sequential(OrderedDict(named)), features
    raise ValueError(f"arch: unknown kind {cfg.arch!r}")


def build_decoder(cfg: ModelConfig, in_dim: int) -> nn.Module:
    """The decoder from a (B, in_dim) latent to ``out`` (B, *data_shape)."""
    shape = tuple(cfg.data_shape)
    if cfg.arch == "linear":
        # Exactly out = W z + b: the probabilistic-PCA model when the likelihood is gaussian.
        return nn.Sequential(nn.Linear(in_dim, _n_voxels(cfg)), nn.Unflatten(1, shape))
    if cfg.arch == "mlp":
        return nn.Sequential(
            mlp(in_dim, tuple(reversed(cfg.hidden)), _n_voxels(cfg), activation=cfg.activation),
            nn.Unflatten(1, shape),
        )
    if cfg.arch == "conv":
        bottleneck = (cfg.channels[-1], *_bottleneck_spatial(cfg))
        layers: list[nn.Module] = [
            nn.Linear(in_dim, math.prod(bottleneck)),
            ACTIVATION(),
            nn.Unflatten(1, bottleneck),
        ]
        # Mirror of the encoder: each transposed conv doubles every spatial size.
        widths = list(reversed(cfg.channels))
        for c_in, c_out in zip(widths, widths[1:] + [cfg.channels[0]]):
            layers.append(_conv(cfg, c_in, c_out, strides=2, is_transposed=True))
        # A 1x1 conv with no activation, so ``out`` can take any real value (mean, logits).
        layers.append(
            Convolution(
                spatial_dims=cfg.spatial_dims,
                in_channels=cfg.channels[0],
                out_channels=shape[0],
                kernel_size=1,
                conv_only=True,
            )
        )
        layers.append(CropToData(cfg))  # the grid's padding is not part of the data
        return nn.Sequential(*layers)
    raise ValueError(f"arch: unknown kind {cfg.arch!r}")
