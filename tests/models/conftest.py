"""Fixtures shared by the augment-level model tests."""

from __future__ import annotations

import pytest

from models.data import make_demo_slices


@pytest.fixture(scope="module")
def slices_cohort(tmp_path_factory):
    """A tiny 2-D demo cohort: 6 CN and 3 AD slices of 16 x 16."""
    root = tmp_path_factory.mktemp("slices") / "cohort"
    make_demo_slices(root, n_control=6, n_ad=3, shape=(16, 16), seed=0)
    return root
