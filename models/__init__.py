"""mcvae's ML library: VAEs whose posteriors are refined by adaptively tuned MCMC.

Imports torch, monai and nibabel only; never imports ``workers`` or ``service``.
"""

import importlib

# Names resolve on first use (PEP 562), so that torch-free modules of this package
# (models.config, models.profiles) can be imported by the gateway without loading torch.
_EXPORTS = {
    "load": "checkpoint", "save": "checkpoint",
    "ModelConfig": "config", "SamplerConfig": "config", "TrainConfig": "config",
    "bits_per_dim": "evaluation", "log_likelihood": "evaluation",
    "build_sampler": "samplers",
    "EpochRecord": "training", "Trainer": "training", "TrainHistory": "training",
    "TrainingCancelled": "training", "train": "training",
    "VAE": "vae", "build_model": "vae",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
