"""Reading an augmentation config from YAML or TOML (for when flags get long)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: config file not found")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: not valid {'TOML' if path.suffix.lower() == '.toml' else 'YAML'} ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings at the top level")  # noqa: TRY004 (main prints ValueErrors)
    return data
