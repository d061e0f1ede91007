"""The model factory: a ``ModelConfig`` to the network its ``arch`` names.

Apart from the classes it builds, so that the dependency runs one way: ``hierarchy`` subclasses
``vae.VAE``, and this module imports both.
"""

from __future__ import annotations

from .config import ModelConfig
from .hierarchy import SpatialHVAE
from .vae import VAE


def build_model(cfg: ModelConfig) -> VAE:
    if cfg.arch == "hconv":
        return SpatialHVAE(cfg)
    return VAE(cfg)
