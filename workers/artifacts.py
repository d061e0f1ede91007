"""Artifact store: files and folders on a filesystem volume, addressed by id, written atomically.

An artifact is a folder ``<root>/<kind>s/<id>/`` holding ``data/`` (the payload: one file or a
tree) and ``manifest.json`` (kind, creation time, sha256 and size of every payload file, free
meta). It is assembled under ``<root>/.staging`` and renamed into place, so readers see a whole
artifact or none, and a crash mid-write leaves only staging debris. Ids look like
``model-3f2a...``: the kind is readable from the id alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .records import utcnow
from .settings import get_settings

KINDS = ("dataset", "checkpoint", "model", "output", "report")
ID_PATTERN = re.compile(r"^(dataset|checkpoint|model|output|report)-[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MANIFEST, DATA = "manifest.json", "data"


class ArtifactNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Artifact:
    id: str
    kind: str
    created: str
    files: dict[str, dict[str, Any]]  # relative path -> {"sha256": ..., "size": ...}
    meta: dict[str, Any] = field(default_factory=dict)
    file: str | None = None  # set for single-file artifacts: the payload's name

    @property
    def size(self) -> int:
        return sum(f["size"] for f in self.files.values())


def kind_of(artifact_id: str) -> str:
    """The kind named by an id; ValueError for anything that is not an artifact id."""
    match = ID_PATTERN.match(artifact_id or "")
    if not match or ".." in artifact_id:
        raise ValueError(f"not an artifact id: {artifact_id!r} (expected e.g. 'dataset-<hex>')")
    return match.group(1)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
        os.fsync(fh.fileno())  # the rename below must not publish data still in the page cache
    return digest.hexdigest()


def run_of(staging_name: str) -> str | None:
    """The run token a staging or scratch folder was tagged with (see ``ArtifactStore``)."""
    match = RUN_TAG.search(staging_name)
    return match.group(1) if match else None


RUN_TAG = re.compile(r"\.run-([0-9a-f]{32})(?:\.|$)")


class ArtifactStore:
    """``run_tag``: the run token of the job run writing through this store; its staging and
    scratch folders carry it (``<id>.run-<token>.<hex>``), so the sweeper removes the debris of
    runs that are over and never the folders of a run in progress."""

    def __init__(self, root: str | os.PathLike, run_tag: str | None = None):
        self.root = Path(root).expanduser()
        self.run_tag = run_tag

    def _staging_name(self, base: str) -> str:
        tag = f".run-{self.run_tag}" if self.run_tag else ""
        return f"{base}{tag}.{uuid.uuid4().hex[:8]}"

    # -- naming ------------------------------------------------------------------------------
    @staticmethod
    def new_id(kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        return f"{kind}-{uuid.uuid4().hex}"

    def _dir(self, artifact_id: str) -> Path:
        return self.root / f"{kind_of(artifact_id)}s" / artifact_id

    # -- writing -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(
        self,
        kind: str,
        artifact_id: str | None = None,
        meta: dict[str, Any] | None = None,
        file: str | None = None,
        replace: bool = False,
    ) -> Iterator[Path]:
        """Yield an empty staging folder; fill it, and on exit it becomes the artifact.

        ``meta`` is read when the block ends, so the caller may fill it in inside the block.
        ``file`` names the one payload file of a single-file artifact. With ``replace`` an
        existing artifact of the same id is swapped out (checkpoints are written once each,
        so only re-runs of a job need this).
        """
        artifact_id = artifact_id or self.new_id(kind)
        if kind_of(artifact_id) != kind:
            raise ValueError(f"artifact id {artifact_id!r} does not name a {kind}")
        final = self._dir(artifact_id)
        if final.exists() and not replace:
            raise FileExistsError(f"artifact {artifact_id} already exists")
        staging_root = self.root / ".staging"
        staging_root.mkdir(parents=True, exist_ok=True)
        staging = staging_root / self._staging_name(artifact_id)
        payload = staging / DATA
        payload.mkdir(parents=True)
        try:
            yield payload
            files = {
                p.relative_to(payload).as_posix(): {"sha256": _sha256(p), "size": p.stat().st_size}
                for p in sorted(payload.rglob("*"))
                if p.is_file()
            }
            if file is not None and file not in files:
                raise FileNotFoundError(f"artifact {artifact_id}: payload file {file!r} was not written")
            manifest = {
                "id": artifact_id,
                "kind": kind,
                "created": utcnow().isoformat(),
                "files": files,
                "meta": meta or {},
                "file": file,
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                self._discard(final)
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A temporary folder on the store's volume (removed afterwards), for unpacking uploads."""
        staging_root = self.root / ".staging"
        staging_root.mkdir(parents=True, exist_ok=True)
        folder = staging_root / (self._staging_name("scratch") if self.run_tag else f"scratch-{uuid.uuid4().hex}")
        folder.mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def put_file(self, kind: str, src: str | os.PathLike, name: str | None = None,
                 meta: dict[str, Any] | None = None, artifact_id: str | None = None,
                 replace: bool = False) -> Artifact:
        src = Path(src)
        name = name or src.name
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"name: a plain file name is required, got {name!r}")
        artifact_id = artifact_id or self.new_id(kind)
        with self.writer(kind, artifact_id, meta, file=name, replace=replace) as payload:
            shutil.copyfile(src, payload / name)
        return self.get(artifact_id)

    def put_dir(self, kind: str, src: str | os.PathLike, meta: dict[str, Any] | None = None,
                artifact_id: str | None = None, replace: bool = False) -> Artifact:
        src = Path(src)
        if not src.is_dir():
            raise ValueError(f"{src}: not a folder")
        artifact_id = artifact_id or self.new_id(kind)
        with self.writer(kind, artifact_id, meta, replace=replace) as payload:
            shutil.copytree(src, payload, dirs_exist_ok=True, symlinks=False)
        return self.get(artifact_id)

    # -- reading -----------------------------------------------------------------------------
    def exists(self, artifact_id: str) -> bool:
        try:
            return (self._dir(artifact_id) / MANIFEST).is_file()
        except ValueError:
            return False

    def get(self, artifact_id: str) -> Artifact:
        manifest = self._dir(artifact_id) / MANIFEST
        try:
            data = json.loads(manifest.read_text())
        except FileNotFoundError:
            raise ArtifactNotFound(f"no artifact {artifact_id!r}") from None
        return Artifact(**{k: data[k] for k in ("id", "kind", "created", "files", "meta", "file")})

    def path(self, artifact_id: str) -> Path:
        """The payload: the file of a single-file artifact, else the payload folder."""
        artifact = self.get(artifact_id)
        payload = self._dir(artifact_id) / DATA
        return payload / artifact.file if artifact.file else payload

    def open(self, artifact_id: str, name: str | None = None) -> BinaryIO:
        """Open a payload file for reading (``name`` relative to the payload folder)."""
        artifact = self.get(artifact_id)
        name = name or artifact.file
        if name is None or name not in artifact.files:
            raise ArtifactNotFound(f"artifact {artifact_id!r} has no file {name!r}")
        return open(self._dir(artifact_id) / DATA / name, "rb")

    def list(self, kind: str | None = None, prefix: str = "") -> list[str]:
        kinds = [kind] if kind else list(KINDS)
        found = []
        for k in kinds:
            folder = self.root / f"{k}s"
            if folder.is_dir():
                found += [p.name for p in folder.iterdir()
                          if p.name.startswith(prefix) and (p / MANIFEST).is_file()]
        return sorted(found)

    def problems(self, artifact_id: str) -> list[str]:
        """What is wrong with a stored artifact: missing, extra, resized or altered files."""
        artifact = self.get(artifact_id)
        payload = self._dir(artifact_id) / DATA
        issues = []
        present = {p.relative_to(payload).as_posix() for p in payload.rglob("*") if p.is_file()}
        for name, info in artifact.files.items():
            path = payload / name
            if name not in present:
                issues.append(f"{name}: missing")
            elif path.stat().st_size != info["size"]:
                issues.append(f"{name}: size {path.stat().st_size}, expected {info['size']}")
            elif _sha256(path) != info["sha256"]:
                issues.append(f"{name}: sha256 does not match the manifest")
        issues += [f"{name}: not in the manifest" for name in sorted(present - set(artifact.files))]
        return issues

    def verify(self, artifact_id: str) -> bool:
        return not self.problems(artifact_id)

    # -- removing ----------------------------------------------------------------------------
    def delete(self, artifact_id: str) -> bool:
        """Remove an artifact; False if there was none. Readers never see half of one."""
        folder = self._dir(artifact_id)
        if not folder.exists():
            return False
        self._discard(folder)
        return True

    def _discard(self, folder: Path) -> None:
        trash = self.root / ".trash"
        trash.mkdir(parents=True, exist_ok=True)
        target = trash / f"{folder.name}.{uuid.uuid4().hex[:8]}"
        os.rename(folder, target)  # atomic: the id stops resolving at once
        shutil.rmtree(target, ignore_errors=True)


def default_store() -> ArtifactStore:
    """The store of the configured deployment (MCVAE_ARTIFACT_ROOT, else MCVAE_DATA_DIR/artifacts)."""
    return ArtifactStore(get_settings().artifacts)
