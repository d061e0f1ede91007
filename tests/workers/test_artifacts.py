"""The artifact store: ids, atomic writes, checksums, deletion."""

from __future__ import annotations

import hashlib
import json

import pytest

from workers.artifacts import ArtifactNotFound, ArtifactStore, kind_of


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(tmp_path / "store")


def test_put_file_records_checksum_and_reads_back(store, tmp_path):
    src = tmp_path / "weights.bin"
    src.write_bytes(b"\x00\x01" * 1000)
    art = store.put_file("model", src, meta={"note": "x"})
    assert kind_of(art.id) == "model" and art.file == "weights.bin"
    assert art.files["weights.bin"] == {"sha256": hashlib.sha256(src.read_bytes()).hexdigest(), "size": 2000}
    assert store.exists(art.id) and store.verify(art.id)
    assert store.path(art.id).read_bytes() == src.read_bytes()
    with store.open(art.id) as fh:
        assert fh.read() == src.read_bytes()
    manifest = json.loads((store.path(art.id).parent.parent / "manifest.json").read_text())
    assert manifest["meta"] == {"note": "x"} and manifest["kind"] == "model"


def test_put_dir_and_verify_detects_tampering(store, tmp_path):
    src = tmp_path / "cohort"
    (src / "AD").mkdir(parents=True)
    (src / "AD" / "a.nii").write_bytes(b"scan-a")
    (src / "manifest.csv").write_text("path,label\nAD/a.nii,AD\n")
    art = store.put_dir("dataset", src)
    assert set(art.files) == {"AD/a.nii", "manifest.csv"}
    with store.open(art.id, "AD/a.nii") as fh:
        assert fh.read() == b"scan-a"
    (store.path(art.id) / "AD" / "a.nii").write_bytes(b"scan-b")  # same size, other bytes
    (store.path(art.id) / "extra.txt").write_text("?")
    assert not store.verify(art.id)
    problems = store.problems(art.id)
    assert any("AD/a.nii: sha256" in p for p in problems)
    assert any("extra.txt: not in the manifest" in p for p in problems)


def test_failed_write_leaves_nothing_behind(store):
    with pytest.raises(RuntimeError), store.writer("output", "output-crash") as payload:
        (payload / "half.bin").write_bytes(b"partial")
        raise RuntimeError("worker died here")
    assert not store.exists("output-crash")
    assert list((store.root / ".staging").iterdir()) == []


def test_ids_are_checked_and_kinds_kept_apart(store, tmp_path):
    for bad in ("../etc", "model-../x", "nonsense-1", "", "model-"):
        with pytest.raises(ValueError):
            kind_of(bad)
    assert not store.exists("../../etc/passwd")
    with pytest.raises(ValueError, match="does not name a dataset"), store.writer("dataset", "model-abc"):
        pass
    with pytest.raises(ArtifactNotFound):
        store.get("model-missing")


def test_replace_and_delete(store, tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("one")
    store.put_file("report", src, artifact_id="report-r1")
    with pytest.raises(FileExistsError):
        store.put_file("report", src, artifact_id="report-r1")
    src.write_text("two")
    store.put_file("report", src, artifact_id="report-r1", replace=True)
    assert store.path("report-r1").read_text() == "two" and store.verify("report-r1")
    assert store.list("report") == ["report-r1"]
    assert store.delete("report-r1") and not store.exists("report-r1")
    assert not store.delete("report-r1")
