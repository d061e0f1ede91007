"""One deployment for the gateway tests: Redis broker, PostgreSQL records, a real Celery worker
process, and the gateway served by uvicorn on a loopback port in this process.

It is session-scoped (a worker start imports torch: seconds), so tests share it and must not
depend on each other's side effects beyond the module fixtures they name. Skipped, with the
reason, when Redis or PostgreSQL is not reachable.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REDIS_URL = os.environ.get("MCVAE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_ADMIN = os.environ.get("MCVAE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

# What the tests need of the gateway: limits small enough to hit, no rate limiting in the way
# (a separate app tests that), revocations visible at once.
GATEWAY_ENV = {
    "MCVAE_MAX_UPLOAD_BYTES": str(4 << 20),
    "MCVAE_MAX_UNPACKED_BYTES": str(8 << 20),
    "MCVAE_MAX_ARCHIVE_FILES": "200",
    "MCVAE_RATE_LIMIT_PER_MINUTE": "1000000",
    "MCVAE_RATE_LIMIT_BURST": "100000",
    "MCVAE_KEY_CACHE_SECONDS": "0",
    "MCVAE_AUTH_FAILURES_PER_MINUTE": "1000000",  # tests send wrong keys on purpose, all from loopback
    "MCVAE_SYNC_SAMPLE_MAX": "4",
    "MCVAE_SYNC_TIMEOUT_SECONDS": "90",
    "MCVAE_SSE_POLL_SECONDS": "0.2",
}
WORKER_ENV = {
    "MCVAE_HEARTBEAT_SECONDS": "0.5",
    "MCVAE_LEASE_SECONDS": "5",
    "MCVAE_PROGRESS_INTERVAL": "0.2",
    "MCVAE_TORCH_THREADS": "1",
    "OMP_NUM_THREADS": "1",
}
# The tiny augmentation: 16^3 scans, a few steps.
TINY_AUGMENT = {"preprocess": {"spatial_dims": 3, "target_shape": [16, 16, 16], "target_spacing": 12.0},
                "model": {"channels": [4, 8], "latent_dims": [4]},
                "sampler": {"kind": "mala", "n_steps": 2}, "pretrain_steps": 12, "mcmc_steps": 4, "check_steps": 10}


@dataclass
class Deployment:
    url: str
    env: dict[str, str]
    data_dir: Path
    worker_log: Path
    keys: dict[str, str] = field(default_factory=dict)

    def client(self, lab: str | None = "lab-a", headers: dict | None = None, **kwargs) -> httpx.Client:
        auth = {"Authorization": f"Bearer {self.keys[lab]}"} if lab else {}
        return httpx.Client(base_url=self.url, headers={**auth, **(headers or {})}, timeout=120, **kwargs)


@contextmanager
def serving(app):
    """``app`` served by uvicorn on a loopback port in a thread (with the deployment's database,
    broker and artifact store when the ``deployment`` fixture is active): its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: server.started, 30, "the gateway to start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _reachable() -> tuple[bool, str]:
    try:
        import psycopg
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
        psycopg.connect(POSTGRES_ADMIN, connect_timeout=3).close()
    except Exception as err:  # noqa: BLE001 - any failure: skip with the reason
        return False, f"Redis or PostgreSQL not reachable: {err}"
    return True, ""


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
    return value


@pytest.fixture(scope="session")
def deployment(tmp_path_factory):
    ok, why = _reachable()
    if not ok:
        pytest.skip(why)
    import psycopg
    import uvicorn

    root = tmp_path_factory.mktemp("gateway")
    prefix = f"mcvae-gw-test-{uuid.uuid4().hex[:10]}:"
    db_name = f"mcvae_gw_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True)
    admin.execute(f'CREATE DATABASE "{db_name}"')
    server_url = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    database = f"{server_url}/{db_name}"
    env = {"MCVAE_DATA_DIR": str(root / "data"), "MCVAE_BROKER_URL": REDIS_URL,
           "MCVAE_REDIS_KEY_PREFIX": prefix, "MCVAE_DATABASE_URL": database, **WORKER_ENV, **GATEWAY_ENV}
    saved = dict(os.environ)
    os.environ.update(env)

    from service import keys
    from service.app import create_app
    from service.settings import ServiceSettings
    from workers import reset_settings, start_worker_process

    reset_settings()
    worker_log = root / "worker.log"
    worker = start_worker_process(("gpu", "cpu"), concurrency=1, device="cpu", env=env,
                                  hostname=f"gw-test-{uuid.uuid4().hex[:6]}@test", log_path=str(worker_log))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(ServiceSettings(), configure_logs=False),
                                           log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: server.started, 30, "the gateway to start")
        deployment = Deployment(f"http://127.0.0.1:{sock.getsockname()[1]}", env, root / "data", worker_log)
        for lab in ("lab-a", "lab-b"):
            deployment.keys[lab] = keys.create_key(lab)
        _wait_for(lambda: "ready." in worker_log.read_text(errors="replace") or worker.poll() is not None,
                  120, "the worker to start")
        assert worker.poll() is None, worker_log.read_text()[-3000:]
        yield deployment
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        try:
            os.killpg(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        worker.wait(timeout=10)
        os.environ.clear()
        os.environ.update(saved)
        from workers import db

        db.dispose_engines()
        reset_settings()
        admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        admin.close()
        drop_redis_keys(prefix)


def drop_redis_keys(prefix: str) -> None:
    """Delete a test deployment's keys from the shared Redis."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    stale = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if stale:
        client.delete(*stale)


def wait_for_gateway(url: str, server: subprocess.Popen, why=lambda: "the gateway did not start",
                     seconds: float = 60) -> None:
    """Until ``url``'s /healthz answers; fails with ``why()`` if ``server`` exits or time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            httpx.get(f"{url}/healthz")
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline and server.poll() is None, why()
            time.sleep(0.3)


# -- data -------------------------------------------------------------------------------------------
def zip_folder(folder: Path, wrap: str | None = "demo") -> bytes:
    """The folder as a zip (inside one top folder, as zipping a folder in a file manager does)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                name = path.relative_to(folder).as_posix()
                zf.write(path, f"{wrap}/{name}" if wrap else name)
    return buf.getvalue()


@pytest.fixture(scope="session")
def demo_cohort(tmp_path_factory) -> Path:
    """The issue's demo cohort: 6 CN and 3 AD scans of 16^3. Made in a child process: the test
    process also runs the gateway, which must work without torch loaded."""
    out = tmp_path_factory.mktemp("cohort") / "demo"
    code = ("import sys; from models.data import make_demo_cohort; "
            "make_demo_cohort(sys.argv[1], n_control=6, n_ad=3, shape=(16, 16, 16), seed=0)")
    subprocess.run([sys.executable, "-c", code, str(out)], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"},
                   cwd=Path(__file__).resolve().parents[2])
    return out


@pytest.fixture(scope="session")
def dataset(deployment, demo_cohort) -> dict:
    """The demo cohort uploaded by lab-a and ingested."""
    with deployment.client() as c:
        r = c.post("/v1/datasets", params={"name": "demo", "wait": 60},
                   files={"file": ("demo.zip", zip_folder(demo_cohort), "application/zip")})
    assert r.status_code == 201, r.text
    return r.json()
