"""Fixtures the CLI tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.test_cli import TINY


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """The tiny settings (tests.cli.test_cli.TINY) as a config file, one per test module."""
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY)
    return path
