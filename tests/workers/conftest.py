"""Fixtures for the workers tests: a private job database, Redis key prefix and data folder per
test, worker subprocesses that are always killed, and a tiny demo cohort.

Real services: Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (user postgres, trust
auth). Tests that need one are skipped, with the reason, when it is not reachable.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REDIS_URL = os.environ.get("MCVAE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_ADMIN = os.environ.get("MCVAE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

# Small numbers so that failures, leases and progress show up within seconds.
FAST = {
    "MCVAE_HEARTBEAT_SECONDS": "0.5",
    "MCVAE_LEASE_SECONDS": "3",
    "MCVAE_PROGRESS_INTERVAL": "0.1",
    "MCVAE_TORCH_THREADS": "1",
    "OMP_NUM_THREADS": "1",
}

TINY_PREPROCESS = {"spatial_dims": 2, "target_shape": [8, 8], "target_spacing": None}
TINY_MODEL = {"arch": "mlp", "latent_dims": [4], "hidden": [32]}


def tiny_train_params(dataset: str, epochs: int = 2, checkpoint_every: int = 5, **extra) -> dict:
    return {"dataset": dataset, "preprocess": TINY_PREPROCESS, "model": TINY_MODEL,
            "sampler": {"kind": "mala", "n_steps": 2},
            "train": {"pretrain_epochs": epochs, "epochs": epochs, "batch_size": 4},
            "checkpoint_every": checkpoint_every, **extra}


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def pytest_collection_modifyitems(items):
    # kombu's SQLAlchemy transport (the embedded broker) uses an ORM option SQLAlchemy 2.1
    # deprecates; not ours to fix, and harmless.
    here = Path(__file__).parent
    mark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(mark)


# -- services ----------------------------------------------------------------------------------
@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as err:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN}: {err}")
    name = f"mcvae_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        from workers import db

        db.dispose_engines()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def redis_prefix():
    """A key prefix of our own in the shared Redis; every key under it is deleted afterwards."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as err:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {err}")
    prefix = f"mcvae-test-{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
def service_env(tmp_path):
    """Point this process (the job API) and the workers it starts at one deployment.

    Call it with overrides; returns the environment for worker processes. The previous
    environment and cached settings are restored afterwards.
    """
    from workers import reset_settings

    saved = dict(os.environ)
    current: dict[str, str] = {}

    def configure(**overrides: str) -> dict[str, str]:
        env = {"MCVAE_DATA_DIR": str(tmp_path / "data"), **FAST, **overrides}
        for key in [k for k in os.environ if k.startswith("MCVAE_")]:
            del os.environ[key]
        os.environ.update(env)
        current.clear()
        current.update(env)
        reset_settings()
        return dict(env)

    try:
        yield configure
    finally:
        os.environ.clear()
        os.environ.update(saved)
        reset_settings()


@pytest.fixture
def redis_deployment(service_env, postgres_url, redis_prefix):
    """Redis broker + PostgreSQL job records; returns a function giving the env (overridable)."""

    def configure(**overrides: str) -> dict[str, str]:
        return service_env(MCVAE_BROKER_URL=REDIS_URL, MCVAE_REDIS_KEY_PREFIX=redis_prefix,
                           MCVAE_DATABASE_URL=postgres_url, **overrides)

    return configure


# -- workers -------------------------------------------------------------------------------------
class WorkerProcess:
    def __init__(self, proc: subprocess.Popen, hostname: str, log_path: Path):
        self.proc, self.hostname, self.log_path = proc, hostname, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = 120) -> None:
        """Until the worker logs 'ready.' (it imports the library before that, so it is warm)."""
        try:
            wait_for(lambda: "ready." in self.log() or not self.alive(), timeout, 0.2,
                     f"worker {self.hostname} to start")
        except TimeoutError:
            raise AssertionError(f"worker did not start:\n{self.log()[-3000:]}") from None
        assert self.alive(), f"worker exited:\n{self.log()[-3000:]}"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the worker and its pool children (they share a process group)."""
        if self.alive():
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def start_worker(tmp_path):
    """start_worker(env, name, queues=("gpu", "cpu"), wait=True) -> WorkerProcess, ready to take jobs.

    Every worker started is killed (SIGKILL to its whole process group) in teardown.
    """
    from workers import start_worker_process

    started: list[WorkerProcess] = []

    def start(env: dict[str, str], name: str, queues=("gpu", "cpu"), concurrency: int = 1,
              wait: bool = True, hostname: str | None = None) -> WorkerProcess:
        # ``hostname``: a node name of a worker started before (a worker that comes back).
        hostname = hostname or f"{name}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        log_path = tmp_path / f"worker-{name}-{len(started)}.log"
        proc = start_worker_process(queues, concurrency=concurrency, hostname=hostname, env=env,
                                    log_path=str(log_path), device="cpu")
        worker = WorkerProcess(proc, hostname, log_path)
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.kill()


# -- data ----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def demo_cohort(tmp_path_factory) -> Path:
    """9 tiny 2-D demo slices (6 CN, 3 AD) in class folders."""
    from models.data import make_demo_slices

    root = tmp_path_factory.mktemp("cohort") / "demo"
    make_demo_slices(root, n_control=6, n_ad=3, shape=(16, 16), seed=0)
    return root


@pytest.fixture
def store_dataset(demo_cohort):
    """Put the demo cohort into the current deployment's artifact store; returns its id."""

    def put() -> str:
        from workers import ArtifactStore, get_settings

        return ArtifactStore(get_settings().artifacts).put_dir("dataset", demo_cohort).id

    return put


def watch(job_id: str, timeout: float, interval: float = 0.05):
    """Poll a job until it finishes; returns (final job, progress values seen on the way)."""
    import workers

    seen: list[float] = []
    deadline = time.monotonic() + timeout
    while True:
        job = workers.get(job_id)
        seen.append(job.progress)
        if job.done:
            return job, seen
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job.state} ({job.stage}) after {timeout} s")
        time.sleep(interval)


def assert_progress_rose(job_id: str, seen: list[float]) -> None:
    """Monotonic in the record as polled and in the event log, with steps in between."""
    import workers

    assert seen == sorted(seen), seen
    logged = [e.progress for e in workers.events(job_id) if e.progress is not None]
    assert logged == sorted(logged), logged
    between = {p for p in seen + logged if 0 < p < 1}
    assert len(between) >= 3, f"too few intermediate progress values: {sorted(between)}"
    assert seen[-1] == 1.0


# -- a Redis of our own (to kill and restart; never the shared one) ------------------------------
class PrivateRedis:
    """redis-server on a free port with no persistence: a restart comes back empty."""

    def __init__(self, folder: Path):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.folder, self.proc = folder, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        wait_for(lambda: _pings(client), 10, 0.05, f"redis-server on port {self.port}")
        client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


@pytest.fixture
def private_redis(tmp_path):
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
