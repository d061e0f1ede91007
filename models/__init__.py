"""mcvae's ML library: VAEs whose posteriors are refined by adaptively tuned MCMC.

Imports torch, monai and nibabel only; never imports ``workers`` or ``service``.
"""

from .checkpoint import load, save
from .config import ModelConfig, SamplerConfig, TrainConfig
from .evaluation import bits_per_dim, log_likelihood
from .samplers import build_sampler
from .training import EpochRecord, Trainer, TrainHistory, TrainingCancelled, train
from .vae import VAE, build_model

__all__ = [
    "VAE",
    "EpochRecord",
    "ModelConfig",
    "SamplerConfig",
    "TrainConfig",
    "TrainHistory",
    "Trainer",
    "TrainingCancelled",
    "bits_per_dim",
    "build_model",
    "build_sampler",
    "load",
    "log_likelihood",
    "save",
    "train",
]
