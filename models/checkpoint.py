"""Saving and loading trained models: safetensors weights plus a JSON config.

A saved model is a folder:
  weights.safetensors   model.* and sampler.* tensors
  config.json           {"format": 1, "model": ModelConfig, "sampler": SamplerConfig, "meta": {...}}
Writes go to a temporary folder that is renamed into place, so a crash never leaves half a
model behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ModelConfig, SamplerConfig
from .samplers import build_sampler

FORMAT_VERSION = 1
WEIGHTS, CONFIG = "weights.safetensors", "config.json"


def save(path: str | os.PathLike, model: nn.Module, sampler: nn.Module, meta: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"sampler.{k}": v for k, v in sampler.state_dict().items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    config = {
        "format": FORMAT_VERSION,
        "model": model.cfg.model_dump(mode="json"),
        "sampler": sampler.cfg.model_dump(mode="json"),
        "meta": meta or {},
    }
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(tensors, str(staging / WEIGHTS))
        (staging / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """Returns (model, sampler, meta), both modules in eval mode on ``device``."""
    from .factory import build_model  # local: the models import networks, which import monai

    path = Path(path)
    config_file, weights_file = path / CONFIG, path / WEIGHTS
    if not config_file.is_file() or not weights_file.is_file():
        raise ValueError(f"{path}: not a saved mcvae model (needs {CONFIG} and {WEIGHTS})")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file}: corrupt config ({err})") from None
    if config.get("format") != FORMAT_VERSION:
        raise ValueError(f"{config_file}: unsupported format {config.get('format')!r}")
    model = build_model(ModelConfig(**config["model"]))
    sampler = build_sampler(SamplerConfig(**config["sampler"]), model.latent_dim)
    tensors = load_file(str(weights_file))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    sampler.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("sampler.")})
    model.to(device).eval()
    sampler.to(device).eval()
    return model, sampler, config.get("meta", {})
