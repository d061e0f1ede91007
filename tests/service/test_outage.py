"""The gateway while its database is down (issue 23, items 3 and 4), over real HTTP: every route
answers 503 with Retry-After and one generic line, never a 500 or the driver's text, and
/readyz (no key) names no host, port, database or driver. Nothing shared is stopped: the
gateway has a private PostgreSQL database, which is closed to connections for the outage."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import pytest

from .conftest import POSTGRES_ADMIN, REDIS_URL, _reachable, drop_redis_keys, wait_for_gateway

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ID = "0" * 8 + "-0000-4000-8000-" + "0" * 12
DATASET, MODEL = f"dataset-{ID}", f"model-{ID}"



def _one_file_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("AD/sub-1.nii.gz", b"not checked before the job is recorded")
    return buf.getvalue()


# Every /v1 route, with a request that passes validation, so that it reaches the database.
ROUTES = {
    ("POST", "/v1/datasets"): {"content": _one_file_zip(), "headers": {"Content-Type": "application/zip"}},
    ("GET", "/v1/datasets"): {},
    ("GET", "/v1/datasets/{dataset_id}"): {},
    ("DELETE", "/v1/datasets/{dataset_id}"): {},
    ("POST", "/v1/models"): {"json": {"dataset": DATASET}},
    ("GET", "/v1/models"): {},
    ("GET", "/v1/models/{model_id}"): {},
    ("DELETE", "/v1/models/{model_id}"): {},
    ("POST", "/v1/models/{model_id}/samples"): {"json": {"n": 1}},
    ("POST", "/v1/augmentations"): {"json": {"dataset": DATASET}},
    ("GET", "/v1/augmentations"): {},
    ("GET", "/v1/augmentations/{augmentation_id}"): {},
    ("GET", "/v1/jobs"): {},
    ("GET", "/v1/jobs/{job_id}"): {},
    ("POST", "/v1/jobs/{job_id}/cancel"): {},
    ("GET", "/v1/jobs/{job_id}/result"): {},
    ("GET", "/v1/jobs/{job_id}/events"): {},
    ("GET", "/v1/usage"): {},
}
PATH_IDS = {"dataset_id": DATASET, "model_id": MODEL, "augmentation_id": f"augmentation-{ID}", "job_id": ID}


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def outage(tmp_path):
    """A gateway process on its own PostgreSQL database, and a switch that closes that database
    to connections (existing ones killed): an outage, as the gateway sees it."""
    ok, why = _reachable()
    if not ok:
        pytest.skip(why)
    import psycopg

    admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True)
    name, prefix = f"mcvae_outage_{uuid.uuid4().hex[:10]}", f"mcvae-outage-{uuid.uuid4().hex[:8]}:"
    admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    port = _port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCVAE_")}
    env.update(MCVAE_DATA_DIR=str(tmp_path / "data"), MCVAE_BROKER_URL=REDIS_URL, MCVAE_REDIS_KEY_PREFIX=prefix,
               MCVAE_DATABASE_URL=f"{base}/{name}", MCVAE_KEY_CACHE_SECONDS="600", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    key = subprocess.run([sys.executable, "-c", "from service.keys import create_key; print(create_key('lab-x'))"],
                         env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    log = tmp_path / "gateway.log"
    code = f"from service.serve import serve; serve(port={port}, embedded_worker=False)"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, stdout=out, stderr=out,
                                  start_new_session=True)

    def down():
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))

    def up():
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_gateway(url, server, lambda: log.read_text()[-2000:])
        yield httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60), down, up, name, log
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        up()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
        drop_redis_keys(prefix)


def _leaks(text: str, database: str) -> list[str]:
    return [s for s in ("127.0.0.1", "5432", database, "psycopg", "postgres", "OperationalError",
                        "connection", "FATAL") if s.lower() in text.lower()]


def test_every_route_is_503_with_retry_after_while_the_database_is_down(outage):
    client, down, up, database, log = outage
    with client:
        served = client.get("/openapi.json").json()["paths"]
        routes = {(m.upper(), p) for p, ops in served.items() if p.startswith("/v1") for m in ops}
        assert routes == set(ROUTES)  # a new route must be added here, and so be tried in an outage
        assert client.get("/v1/jobs").status_code == 200  # the key is now remembered (600 s)
        down()
        for (method, path), request in sorted(ROUTES.items()):
            r = client.request(method, path.format(**PATH_IDS), **request)
            where = f"{method} {path}: {r.status_code} {r.text[:300]}"
            assert r.status_code == 503, where
            assert int(r.headers["retry-after"]) > 0, where
            body = r.json()
            assert body["code"] == "database_unavailable" and "\n" not in body["detail"], where
            assert body["detail"] == "the service's database is unavailable; nothing was changed: try again later"
            assert not _leaks(r.text, database), (where, _leaks(r.text, database))
        # A key the gateway has not seen yet: the outage, not "invalid key" (and no failed check).
        other = client.get("/v1/jobs", headers={"X-API-Key": "mcvae_0123456789_" + "y" * 43})
        assert other.status_code == 503 and other.json()["code"] == "database_unavailable"

        time.sleep(5.1)  # past readiness's cache of the last good probe
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == {"ok": False, "detail": "database unreachable"}
        assert not _leaks(ready.text, database), ready.text
        assert client.get("/healthz").status_code == 200  # the process itself is fine

        up()  # and back: no restart needed
        deadline = time.monotonic() + 30
        while (r := client.get("/v1/jobs")).status_code != 200:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.5)
    # The operator keeps the detail: the driver's error is in the gateway's log.
    text = log.read_text(errors="replace")
    assert "database unavailable" in text and database in text
