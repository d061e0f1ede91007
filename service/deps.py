"""FastAPI dependencies shared by the routers: settings, the artifact store, the caller's lab."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from workers import ArtifactStore, get_settings

from .auth import Lab, current_lab
from .schemas import ID_PATTERN
from .settings import ServiceSettings


def service_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


def artifact_store() -> ArtifactStore:
    return ArtifactStore(get_settings().artifacts)


LabDep = Annotated[Lab, Depends(current_lab)]
SettingsDep = Annotated[ServiceSettings, Depends(service_settings)]
StoreDep = Annotated[ArtifactStore, Depends(artifact_store)]
# Path ids: shape-checked (422) before any lookup.
IdPath = Annotated[str, Path(max_length=200, pattern=ID_PATTERN)]
