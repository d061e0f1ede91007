"""mcvae's ML library: VAEs whose posteriors are refined by adaptively tuned MCMC.

Imports torch, monai and nibabel only; never imports ``workers`` or ``service``.

Names are loaded on first use, so that the torch-free modules (``models.config``,
``models.options``, ``models.targets``) can be imported by the gateway without loading torch.
"""

from importlib import import_module

_EXPORTS = {
    "load": ".checkpoint", "save": ".checkpoint",
    "ModelConfig": ".config", "SamplerConfig": ".config", "TrainConfig": ".config",
    "bits_per_dim": ".evaluation", "log_likelihood": ".evaluation",
    "build_sampler": ".samplers",
    "EpochRecord": ".training", "Trainer": ".training", "TrainHistory": ".training",
    "TrainingCancelled": ".training", "train": ".training",
    "build_model": ".factory", "VAE": ".vae",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 (the names _EXPORTS lists)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value
