"""Faults against a running deployment: does every job still end, once, and how fast is a dead
worker's job taken over?

A gateway (uvicorn) and two Celery workers (one pool process each) on a private redis-server
(port 6390 or the next free one; killed and restarted here, never a shared Redis) and a private
PostgreSQL database. Jobs are submitted through the REST API. Scenarios:

1. ``worker back``: kill -9 a worker's main process and pool child while it trains; start it
   again (same node name) 2 s later.
2. ``worker gone``: kill -9 the worker running a training job; it never comes back, the other
   worker (idle) takes the job over: the settings' takeover figure (defaults: lease 60 s,
   visibility timeout 3600 s, recovery every 10 s).
3. ``redis emptied``: kill redis-server while jobs run and wait, start it again empty.
4. ``gateway killed mid-upload``: kill -9 the gateway while a client streams an upload; start it
   again.

Then one storage sweep (retentions 0: as once they have passed) must leave no staging, scratch,
orphaned checkpoint or upload copy behind; the script exits non-zero otherwise.

    python bench/chaos.py [--fast]     # --fast: lease 6 s, heartbeat 1 s, recovery every 2 s
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine, parse_args, write_result
from bench.queue_overhead import _temp_postgres

ROOT = Path(__file__).resolve().parent.parent
# 9 scans of 8^3 through an MLP: a few ms per step, so --epochs sets a job's length.
PREPROCESS = {"spatial_dims": 3, "target_shape": [8, 8, 8], "target_spacing": 24.0}
MODEL = {"arch": "mlp", "latent_dims": [4], "hidden": [32]}


def _free_port(start: int) -> int:
    for port in range(start, start + 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise SystemExit(f"no free port in {start}..{start + 99}")


def _wait(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return value


@dataclass
class Deployment:
    folder: Path
    env: dict[str, str]
    redis_port: int
    gateway_port: int
    redis: subprocess.Popen | None = None
    gateway: subprocess.Popen | None = None
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def start_redis(self) -> None:
        import redis

        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.redis_port, socket_connect_timeout=1)
        _wait(lambda: _pings(client), 10, "redis-server")

    def start_gateway(self) -> None:
        with open(self.folder / "gateway.log", "ab") as log:  # the child keeps its own descriptor
            self.gateway = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app", "--host", "127.0.0.1",
                 "--port", str(self.gateway_port), "--no-access-log"],
                env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=ROOT)
        _wait(lambda: _answers(self.url), 60, "the gateway")

    def start_worker(self, name: str) -> None:
        import workers

        log = self.folder / f"worker-{name}.log"
        mark = log.stat().st_size if log.exists() else 0
        self.workers[name] = workers.start_worker_process(
            ("gpu", "cpu"), concurrency=1, device="cpu", hostname=f"{name}@chaos", env=self.env,
            log_path=str(log))
        _wait(lambda: "ready." in log.read_text(errors="replace")[mark:], 120, f"worker {name}")

    def kill(self, proc: subprocess.Popen) -> float:
        """kill -9 of the process and everything in its process group (a worker's pool child)."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        at = time.time()
        proc.wait(timeout=10)
        return at

    def stop(self) -> None:
        for proc in [self.gateway, *self.workers.values()]:
            if proc is not None and proc.poll() is None:
                self.kill(proc)
        if self.redis is not None and self.redis.poll() is None:
            self.redis.kill()
            self.redis.wait(timeout=10)


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _cohort_zip(folder: Path) -> bytes:
    import io
    import zipfile

    from models.data import make_demo_cohort

    make_demo_cohort(folder, n_control=6, n_ad=3, shape=(16, 16, 16), seed=0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return buf.getvalue()


# -- the job record's view of what happened ------------------------------------------------------
def _runs(job_id: str) -> list[tuple[float, str]]:
    import workers

    return [(e.at.timestamp(), e.message) for e in workers.events(job_id)
            if e.message.startswith(("started (", "resumed ("))]


def _first(job_id: str, prefix: str, after: float = 0.0) -> float | None:
    import workers

    times = [e.at.timestamp() for e in workers.events(job_id) if e.message.startswith(prefix)
             and e.at.timestamp() >= after]
    return min(times) if times else None


@dataclass
class Outcome:
    scenario: str
    submitted: int = 0
    succeeded: int = 0
    lost: int = 0
    duplicated: int = 0
    takeover_s: float | None = None
    requeued_s: float | None = None
    note: str = ""


def _settle(outcome: Outcome, job_ids: list[str], interrupted: set[str], timeout: float) -> None:
    """Wait for the jobs; lost = not succeeded in time; duplicated = run more often than the
    faults explain (once, plus once per interruption)."""
    import workers

    outcome.submitted = len(job_ids)
    deadline = time.monotonic() + timeout
    for job_id in job_ids:
        try:
            job = workers.wait(job_id, timeout=max(1.0, deadline - time.monotonic()), poll=0.5)
        except TimeoutError:
            outcome.lost += 1
            continue
        if job.state == "succeeded":
            outcome.succeeded += 1
        else:
            outcome.lost += 1
        if len(_runs(job_id)) > 1 + (job_id in interrupted):
            outcome.duplicated += 1


def _train(api, dataset: str, epochs: int) -> str:
    r = api.post("/v1/models", json={"dataset": dataset, "preprocess": PREPROCESS, "model": MODEL,
                                     "sampler": {"kind": "mala", "n_steps": 2},
                                     "train": {"pretrain_epochs": epochs // 2, "epochs": epochs, "batch_size": 4},
                                     "checkpoint_every": 30})
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def _running_with_checkpoint(job_ids: list[str]) -> dict[str, str]:
    """job id -> worker of the jobs running with at least one checkpoint written."""
    import workers

    found = {}
    for job_id in job_ids:
        job = workers.get(job_id)
        if job.state == "running" and _first(job_id, "checkpoint at step") is not None:
            found[job_id] = job.worker
    return found


def worker_back(d: Deployment, api, dataset: str, epochs: int) -> Outcome:
    outcome = Outcome("worker killed, back in 2 s")
    jobs = [_train(api, dataset, epochs) for _ in range(3)]
    victim_job, node = next(iter(_wait(lambda: _running_with_checkpoint(jobs), 300, "a checkpoint").items()))
    name = node.split("@")[0]
    killed = d.kill(d.workers[name])
    time.sleep(2)
    d.start_worker(name)
    _settle(outcome, jobs, {victim_job}, 900)
    resumed = _first(victim_job, "resumed (", killed)
    outcome.takeover_s = resumed - killed if resumed else None
    outcome.note = "its own dead run, recognised at restart"
    return outcome


def worker_gone(d: Deployment, api, dataset: str, epochs: int) -> Outcome:
    outcome = Outcome("worker killed for good")
    job = _train(api, dataset, epochs)
    _, node = next(iter(_wait(lambda: _running_with_checkpoint([job]), 300, "a checkpoint").items()))
    name = node.split("@")[0]
    killed = d.kill(d.workers.pop(name))
    _settle(outcome, [job], {job}, 900)
    requeued = _first(job, "its worker", killed)
    resumed = _first(job, "resumed (", killed)
    outcome.requeued_s = requeued - killed if requeued else None
    outcome.takeover_s = resumed - killed if resumed else None
    outcome.note = "the other worker, idle, takes it over"
    d.start_worker(name)  # for the next scenario
    return outcome


def redis_emptied(d: Deployment, api, dataset: str, epochs: int) -> Outcome:
    import workers

    outcome = Outcome("redis restarted empty")
    jobs = [_train(api, dataset, epochs) for _ in range(4)]  # two run, two wait
    _wait(lambda: len(_running_with_checkpoint(jobs)) == 2, 300, "two running jobs")
    waiting = [j for j in jobs if workers.get(j).state == "queued"]
    d.redis.kill()
    d.redis.wait(timeout=10)
    d.start_redis()
    restarted = time.time()
    _settle(outcome, jobs, set(), 900)
    republished = [t for t in (_first(j, "its message was lost", restarted) for j in waiting) if t]
    outcome.requeued_s = max(republished) - restarted if republished else None
    outcome.note = f"{len(waiting)} queued messages lost, {len(republished)} re-published"
    return outcome


def gateway_mid_upload(d: Deployment, api, cohort: bytes) -> Outcome:
    import httpx

    outcome = Outcome("gateway killed mid-upload")
    scratch = d.folder / "data" / "artifacts" / ".staging"

    def slow_body():
        for i in range(0, len(cohort), 4096):
            yield cohort[i:i + 4096]
            time.sleep(0.05)

    def upload():
        try:
            api.post("/v1/datasets", content=slow_body(), headers={"Content-Type": "application/zip"})
        except httpx.HTTPError:
            pass  # the gateway died under it: expected

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()
    _wait(lambda: any(p.name.startswith("scratch") for p in scratch.iterdir()), 60, "a partial upload")
    d.kill(d.gateway)
    thread.join(timeout=30)
    d.start_gateway()
    left = [p.name for p in scratch.iterdir() if p.name.startswith("scratch")]
    outcome.note = f"{len(left)} partial upload(s) left in scratch for the sweeper"
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="short lease and recovery interval")
    parser.add_argument("--epochs", type=int, default=150, help="length of each training job")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--keep", action="store_true", help="keep the data folder and logs")
    args = parse_args(parser, {"fast": True, "epochs": 20})
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed")

    folder = Path(tempfile.mkdtemp(prefix="mcvae-chaos-"))
    database, drop_database = _temp_postgres(args.postgres)
    if database is None:
        raise SystemExit("PostgreSQL is needed")
    redis_port = _free_port(6390)
    env = {"MCVAE_DATA_DIR": str(folder / "data"), "MCVAE_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
           "MCVAE_DATABASE_URL": database, "MCVAE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MCVAE_ALLOW_PATH_SOURCES": "false", "MCVAE_RATE_LIMIT_PER_MINUTE": "100000",
           "MCVAE_RATE_LIMIT_BURST": "10000"}
    if args.fast:
        env.update({"MCVAE_LEASE_SECONDS": "6", "MCVAE_HEARTBEAT_SECONDS": "1", "MCVAE_RECOVERY_INTERVAL": "2"})
    os.environ.update(env)

    import httpx

    import workers
    from service.keys import create_key
    from workers import sweeper

    settings = workers.get_settings()
    d = Deployment(folder, env, redis_port, _free_port(8800))
    outcomes: list[Outcome] = []
    try:
        d.start_redis()
        d.start_gateway()
        for name in ("chaos-a", "chaos-b"):
            d.start_worker(name)
        key = create_key("chaos")
        api = httpx.Client(base_url=d.url, headers={"Authorization": f"Bearer {key}"}, timeout=300)
        cohort = _cohort_zip(folder / "cohort")
        r = api.post("/v1/datasets", params={"wait": 120}, content=cohort,
                     headers={"Content-Type": "application/zip"})
        assert r.status_code == 201, r.text
        dataset = r.json()["id"]
        started = time.time()
        one = _train(api, dataset, args.epochs)
        job = workers.wait(one, timeout=600)
        print(f"one training job alone: {job.finished_at.timestamp() - started:.1f} s ({job.state})")

        outcomes.append(worker_back(d, api, dataset, args.epochs))
        outcomes.append(worker_gone(d, api, dataset, args.epochs))
        outcomes.append(redis_emptied(d, api, dataset, args.epochs))
        outcomes.append(gateway_mid_upload(d, api, cohort))

        zero = settings.model_copy(update={k: 0.0 for k in (
            "staging_retention", "scratch_retention", "checkpoint_retention", "upload_retention",
            "cache_retention")})
        removed = sweeper.sweep(zero)
        store = workers.ArtifactStore(settings.artifacts)
        leftovers = ([f".staging/{p.name}" for p in (store.root / ".staging").iterdir()]
                     + store.list("checkpoint") + store.list("dataset", "dataset-upload-")
                     + [f".trash/{p.name}" for p in (store.root / ".trash").glob("*")])
    finally:
        d.stop()
        workers.db.dispose_engines()
        drop_database()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    where = machine("cpu")
    mode = ("fast: lease 6 s, heartbeat 1 s, recovery every 2 s" if args.fast else
            f"defaults: lease {settings.lease_seconds:g} s, heartbeat {settings.heartbeat_seconds:g} s, "
            f"recovery every {settings.recovery_interval:g} s, visibility timeout {settings.visibility_timeout} s")
    print(f"\nchaos: gateway + 2 workers x 1 process, private redis-server :{redis_port}, PostgreSQL; {mode}\n{where}\n")
    head = f"{'scenario':<28} {'submitted':>9} {'succeeded':>9} {'lost':>4} {'dup':>4} {'requeued s':>10} {'takeover s':>10}  note"
    print(head)
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    for o in outcomes:
        print(f"{o.scenario:<28} {o.submitted:>9} {o.succeeded:>9} {o.lost:>4} {o.duplicated:>4} "
              f"{fmt(o.requeued_s):>10} {fmt(o.takeover_s):>10}  {o.note}")
    print("\nsweep removed: " + ", ".join(f"{len(v)} {k}" for k, v in removed.items()))
    print(f"left after the sweep (staging, scratch, checkpoints, upload copies, trash): {leftovers or 'nothing'}")
    out = write_result("chaos" + ("_fast" if args.fast else ""), {
        "machine": where, "mode": mode, "outcomes": [o.__dict__ for o in outcomes],
        "swept": {k: len(v) for k, v in removed.items()}, "leftovers": leftovers})
    print(f"wrote {out}")
    bad = [o for o in outcomes if o.lost or o.duplicated]
    if bad or leftovers:
        raise SystemExit("FAILED: jobs lost or duplicated, or debris left after the sweep")


if __name__ == "__main__":
    main()
