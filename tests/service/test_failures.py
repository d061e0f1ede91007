"""The gateway when its surroundings fail (issue 10, items 6 and 7): a broker that does not
answer, storage that refuses writes. Each answer is a 503 that says what to do, names no
internal address or server path, and leaves no record or file behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .conftest import wait_for_gateway, zip_folder

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


@pytest.fixture
def gateway_without_broker(tmp_path):
    """A real gateway process whose broker URL points at a closed port (SQLite records)."""
    yield from _gateway(tmp_path)


def _gateway(tmp_path):
    broker_port, port = _closed_port(), _closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCVAE_")}
    env.update(MCVAE_DATA_DIR=str(tmp_path / "data"), MCVAE_BROKER_URL=f"redis://127.0.0.1:{broker_port}/0",
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    key = subprocess.run([sys.executable, "-c", "from service.keys import create_key; print(create_key('lab-x'))"],
                         env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    code = f"from service.serve import serve; serve(port={port}, embedded_worker=False)"
    server = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_gateway(url, server)
        yield httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60), broker_port, tmp_path / "data"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _leaks(text: str, broker_port: int, data_dir: Path) -> list[str]:
    return [s for s in ("127.0.0.1", f":{broker_port}", "redis://", str(data_dir)) if s in text]


def test_a_submission_refused_by_a_dead_broker_leaves_no_job_and_no_address(gateway_without_broker, demo_cohort):
    client, broker_port, data_dir = gateway_without_broker
    with client:
        r = client.post("/v1/datasets", files={"file": ("demo.zip", zip_folder(demo_cohort), "application/zip")})
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] and "try again later" in r.json()["detail"]
        assert not _leaks(r.text, broker_port, data_dir)
        assert client.get("/v1/jobs").json()["items"] == []  # no failed job in the lab's lists
        assert client.get("/v1/datasets").json()["total"] == 0
        ready = client.get("/readyz")
        assert ready.status_code == 503 and not ready.json()["checks"]["broker"]["ok"]
        assert not _leaks(ready.text, broker_port, data_dir), ready.text
    stored = [p for p in (data_dir / "artifacts").rglob("*") if p.is_file()]
    assert stored == []  # the upload was removed, no scratch left


def test_storage_that_refuses_writes_is_503_and_keeps_nothing(tmp_path, demo_cohort):
    """Really broken storage (tests run as root, so a read-only folder would not stop a write):
    the artifact store's staging folder is a file, so no scratch space can be made there."""
    staging = tmp_path / "data" / "artifacts" / ".staging"
    staging.parent.mkdir(parents=True)
    staging.write_text("not a folder")
    client, broker_port, data_dir = next(gen := _gateway(tmp_path))
    try:
        with client:
            r = client.post("/v1/datasets", files={"file": ("demo.zip", zip_folder(demo_cohort), "application/zip")})
            assert r.status_code == 503, r.text
            assert r.json()["code"] == "storage_unavailable" and "could not write to its storage" in r.json()["detail"]
            assert r.headers["retry-after"] and not _leaks(r.text, broker_port, data_dir)
            assert client.get("/v1/datasets").json()["total"] == 0
            assert client.get("/healthz").status_code == 200
    finally:
        gen.close()
    assert [p.name for p in (data_dir / "artifacts").iterdir()] == [".staging"]


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_disk_filling_up_mid_upload_is_503_and_keeps_nothing(deployment, demo_cohort, monkeypatch, kind):
    """ENOSPC while unpacking (a disk cannot be filled here: the failing write is injected at the
    lowest level, the file object the unpacker writes members through)."""
    import errno
    import io
    import tarfile

    from service import uploads

    from .test_bad_requests import _store_entries

    class FullDisk(io.FileIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(uploads, "open", lambda path, mode: FullDisk(path, mode), raising=False)
    if kind == "zip":
        body = zip_folder(demo_cohort)
    else:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            tf.add(demo_cohort, arcname="demo")
        body = buf.getvalue()
    before = _store_entries(deployment)
    with deployment.client() as c:
        r = c.post("/v1/datasets", files={"file": (f"demo.{kind}", body, "application/octet-stream")})
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "storage_unavailable"
    assert _store_entries(deployment) == before
