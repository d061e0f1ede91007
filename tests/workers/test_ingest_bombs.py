"""An operator's archive on the workers is judged from its headers too (issue 10, item 9):
a decompression bomb is refused before ingest inflates it."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from workers import ArtifactStore, Settings
from workers.context import JobContext
from workers.handlers import HANDLERS
from workers.params import SCHEMAS, InvalidParams


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_an_archive_bomb_is_refused_before_extraction(tmp_path, kind):
    archive = tmp_path / "cohort" / f"bomb.{kind}"
    archive.parent.mkdir()
    zeros = bytes(6 << 20)  # 6 MiB that deflate to a few KiB
    if kind == "zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("CN/a.nii", zeros)
    else:
        with tarfile.open(archive, "w:gz") as tf:
            info = tarfile.TarInfo("CN/a.nii")
            info.size = len(zeros)
            tf.addfile(info, io.BytesIO(zeros))
    store = ArtifactStore(tmp_path / "data" / "artifacts")
    ctx = JobContext("bomb", store, settings=Settings(data_dir=tmp_path / "data"))
    with pytest.raises(InvalidParams, match="a bomb"):
        HANDLERS["ingest"](ctx, SCHEMAS["ingest"].model_validate({"source": str(archive)}))
    staging = store.root / ".staging"
    assert not [p for p in staging.rglob("*") if p.is_file()]  # nothing was inflated or kept
