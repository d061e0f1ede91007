"""Resolution profiles (issue 12, item 5): one named choice of grid, spacing, network widths and
step budget per use, defined once. Torch-free (stdlib only), so the gateway and the CLI's
argument parsing can list and check profile names without loading torch.

  demo       32^3 at 6 mm: minutes on 2 CPU cores (`mcvae demo`)
  standard   64^3 at 3 mm: CPU-feasible, tens of minutes per model
  research   96 x 112 x 96 at 2 mm (a whole adult brain): for a GPU, bf16 autocast on CUDA

``profile_settings(name)`` returns plain dicts with the keys of ``models.augment.AugmentConfig``
(``preprocess``, ``model``, ``train``, ``pretrain_steps``, ``mcmc_steps``); a caller's own
settings override them key by key.
"""

from __future__ import annotations

import copy
from typing import Any

PROFILES: dict[str, dict[str, Any]] = {
    "demo": {
        "preprocess": {"spatial_dims": 3, "target_spacing": 6.0, "target_shape": [32, 32, 32]},
        "model": {"channels": [8, 16, 32]},
        "train": {"batch_size": 8},
        "pretrain_steps": 600,
        "mcmc_steps": 150,
    },
    "standard": {
        "preprocess": {"spatial_dims": 3, "target_spacing": 3.0, "target_shape": [64, 64, 64]},
        "model": {"channels": [8, 16, 32, 64]},
        "train": {"batch_size": 8},
        "pretrain_steps": 600,
        "mcmc_steps": 150,
    },
    "research": {
        "preprocess": {"spatial_dims": 3, "target_spacing": 2.0, "target_shape": [96, 112, 96]},
        "model": {"channels": [16, 32, 64, 128]},
        "train": {"batch_size": 8, "device": "cuda", "amp": True},
        "pretrain_steps": 2000,
        "mcmc_steps": 500,
    },
}
PROFILE_NAMES = tuple(PROFILES)
DEFAULT_PROFILE = "demo"


def profile_settings(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The profile's settings with ``overrides`` merged in (nested dicts key by key)."""
    if name not in PROFILES:
        raise ValueError(f"profile: unknown profile '{name}' (profiles: {', '.join(PROFILE_NAMES)})")
    merged = copy.deepcopy(PROFILES[name])
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def config_with_profile(data: dict[str, Any], profile: str | None = None) -> dict[str, Any]:
    """The one merge rule of the CLI (``--profile``, a config file's ``profile:`` key) and the
    gateway/worker (``POST /v1/augmentations``'s ``profile``): AugmentConfig settings ``data``
    with the profile's settings merged under them (``data`` wins key by key, nested sections
    too). ``profile`` (the flag, the request field) wins over a ``profile`` key in ``data``; the
    result has no ``profile`` key. Without a profile, ``data`` is returned as it is (a copy)."""
    data = dict(data or {})
    name = profile or data.pop("profile", None)
    data.pop("profile", None)
    if not name:
        return data
    if not isinstance(name, str):
        raise ValueError(f"profile: expected a profile name ({', '.join(PROFILE_NAMES)}), got {name!r}")  # noqa: TRY004
    return profile_settings(name, data)
