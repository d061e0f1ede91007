"""Storage used by the caller's lab, per kind of artifact (what a sweep or a delete frees)."""

from __future__ import annotations

from fastapi import APIRouter

import workers.usage

from ...deps import LabDep
from ...schemas import Usage
from . import COMMON

router = APIRouter(prefix="/v1/usage", tags=["usage"], responses=COMMON)


@router.get("", response_model=Usage, summary="Bytes the lab's datasets, models and outputs hold")
def usage(lab: LabDep) -> Usage:
    figure = workers.usage.storage(lab.name)
    return Usage(lab=lab.name, total_bytes=figure.pop("total"), bytes=figure)
