"""Faults against a running deployment: does every job still end, once, and how fast is a dead
worker's job taken over?

A gateway (uvicorn) and two Celery workers (one pool process each) on a private redis-server
(port 6390 or the next free one; killed and restarted here, never a shared Redis) and a private
PostgreSQL database. Jobs are submitted through the REST API. Scenarios:

1. ``worker back``: kill -9 a worker's main process and pool child while it trains; start it
   again (same node name) 2 s later.
2. ``worker gone``: kill -9 the worker running a training job; it never comes back, the other
   worker (idle) takes the job over: the settings' takeover figure (defaults: lease 20 s,
   heartbeat 4 s, recovery every 4 s, visibility timeout 3600 s).
3. ``redis emptied``: kill redis-server while jobs run and wait, start it again empty.
4. ``gateway killed mid-upload``: kill -9 the gateway while a client streams an upload; start it
   again.
5. ``database outage``: the workers' and the gateway's database connections go through a TCP
   proxy (bench/tcp_proxy.py) that cuts them for 20 s as a training job reaches 80 %, across its
   end; the shared PostgreSQL server keeps running.
6. ``worker renamed``: kill -9 the worker running a training job and start it again under a new
   node name: it cannot recognise its old run, so the job is taken over by the lease.
7. ``oversized config``: training configs past the job-size limits (epochs 1e9, a 2048^3 grid,
   hidden [1e8], batch 1e7) must be refused (422) with no job queued.
8. ``1 GiB non-archive``: stream 1 GiB that is no archive to the upload route (never held in
   memory); it must be refused at once, leaving nothing in staging.
9. ``1,000 wrong keys``: from one address; then how soon is the right key served again.

Each scenario's row: jobs lost, jobs run twice, seconds to recover, and the bytes it left on
disk (staging, kept outcomes, trash) before any sweep (they add up: the sweep runs once, at the
end). Then one storage sweep (retentions 0: as once they have passed) must leave no staging, scratch,
orphaned checkpoint or upload copy behind; the script exits non-zero otherwise.

    python bench/chaos.py [--fast] [--only db-outage,worker-renamed,...]
    # --fast: lease 6 s, heartbeat 1 s, recovery every 2 s
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
from bench.cohorts import cohort_zip
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

    def start_worker(self, name: str, hostname: str | None = None) -> None:
        import workers

        log = self.folder / f"worker-{name}.log"
        mark = log.stat().st_size if log.exists() else 0
        self.workers[name] = workers.start_worker_process(
            ("gpu", "cpu"), concurrency=1, device="cpu", hostname=hostname or f"{name}@chaos", env=self.env,
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
    recover_s: float | None = None  # the fault's end (or the kill) to service as usual
    bytes_left: int | None = None  # in staging, kept outcomes and trash, before any sweep
    failed: bool = False  # a check of the scenario's own did not hold (see note)
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


def _train_body(dataset: str, epochs: int) -> dict:
    return {"dataset": dataset, "preprocess": dict(PREPROCESS), "model": dict(MODEL),
            "sampler": {"kind": "mala", "n_steps": 2},
            "train": {"pretrain_epochs": epochs // 2, "epochs": epochs, "batch_size": 4},
            "checkpoint_every": 30}


def _train(api, dataset: str, epochs: int) -> str:
    r = api.post("/v1/models", json=_train_body(dataset, epochs))
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def _debris_bytes(root: Path) -> int:
    """Bytes in the places faults leave partial work: staging, kept outcomes, trash."""
    total = 0
    for folder in (".staging", ".outcomes", ".trash"):
        for path in (root / folder).rglob("*"):
            try:
                total += path.lstat().st_size if path.is_file() else 0
            except FileNotFoundError:
                pass
    return total


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


def database_outage(d: Deployment, api, dataset: str, epochs: int, proxy, outage: float = 20.0) -> Outcome:
    import workers
    from workers import outcomes

    outcome = Outcome(f"database unreachable {outage:g} s across a job's end")
    # The cut must fall between 80 % and the end: a short job (--quick: about 2 s) can get from
    # 80 % to recorded between two polls, and then nothing is kept to wait for. So the job is at
    # least 100 epochs, and a job recorded before the cut is retried longer (it tests nothing).
    epochs = max(epochs, 100)
    for _ in range(3):
        job = _train(api, dataset, epochs)
        _wait(lambda job=job: workers.get(job).progress >= 0.8, 600, "the job at 80 %", interval=0.05)
        proxy.down()
        cut = time.time()
        if workers.get(job).done:  # recorded before the cut
            proxy.up()
            epochs *= 2
            continue
        break
    else:
        outcome.failed = True
        outcome.note = "every job was recorded before the cut; nothing was tested"
        return outcome
    kept = outcomes.path(workers.get_settings().artifacts, job)
    _wait(kept.exists, 600, "the job to finish during the outage", interval=0.05)
    finished = time.time()
    time.sleep(max(0.0, cut + outage - time.time()))
    proxy.up()
    back = time.time()
    _settle(outcome, [job], set(), 600)
    record = workers.get(job)
    outcome.recover_s = record.finished_at.timestamp() - back if record.finished_at else None
    outcome.note = (f"down {back - cut:.1f} s; the job finished {finished - cut:.1f} s into it; "
                    f"recorded by its own worker: {record.attempts == 1}")
    return outcome


def worker_renamed(d: Deployment, api, dataset: str, epochs: int) -> Outcome:
    outcome = Outcome("worker back under a new name")
    job = _train(api, dataset, epochs)
    _, node = next(iter(_wait(lambda: _running_with_checkpoint([job]), 300, "a checkpoint").items()))
    name = node.split("@")[0]
    killed = d.kill(d.workers.pop(name))
    d.start_worker(name, hostname=f"{name}-{int(killed)}@chaos")  # a new node name
    _settle(outcome, [job], {job}, 900)
    requeued = _first(job, "its worker", killed)
    resumed = _first(job, "resumed (", killed)
    outcome.requeued_s = requeued - killed if requeued else None
    outcome.takeover_s = outcome.recover_s = resumed - killed if resumed else None
    outcome.note = "taken over by the lease (kill to resumed)"
    return outcome


def oversized_config(d: Deployment, api, dataset: str) -> Outcome:
    import workers

    outcome = Outcome("oversized training configs")
    oversized = {"epochs 1e9": ("train", {"epochs": 10**9}),
                 "target_shape 2048^3": ("preprocess", {"target_shape": [2048] * 3, "target_spacing": 0.1}),
                 "hidden [1e8]": ("model", {"hidden": [10**8]}),
                 "batch_size 1e7": ("train", {"batch_size": 10**7})}
    before = len(workers.list_jobs(limit=1000))
    answers, started = [], time.perf_counter()
    for section, change in oversized.values():
        body = _train_body(dataset, 10)
        body[section].update(change)
        answers.append(api.post("/v1/models", json=body).status_code)
    took = time.perf_counter() - started
    queued = len(workers.list_jobs(limit=1000)) - before
    outcome.recover_s = took / len(oversized)  # per answer; no job is submitted
    outcome.failed = queued != 0 or set(answers) != {422}
    outcome.note = f"{len(answers)} requests answered {answers} ({', '.join(oversized)}); {queued} job(s) queued"
    return outcome


def non_archive(d: Deployment, key: str, size: int = 1 << 30) -> Outcome:
    """Over a raw connection: the answer is read as soon as it comes, while still sending (an
    HTTP client library sends the whole body first, and a server that answered and closed then
    looks like a broken pipe)."""
    import http.client
    import select

    outcome = Outcome("1 GiB non-archive upload")
    block = (b"this is a text file, not an archive\n" * 30_000)[: 1 << 20]  # never more in memory
    conn = http.client.HTTPConnection("127.0.0.1", d.gateway_port, timeout=60)
    conn.putrequest("POST", "/v1/datasets")
    for name, value in (("Authorization", f"Bearer {key}"), ("Content-Type", "application/zip"),
                        ("Transfer-Encoding", "chunked")):
        conn.putheader(name, value)
    started, sent = time.perf_counter(), 0
    conn.endheaders()
    try:
        while sent < size and not select.select([conn.sock], [], [], 0)[0]:
            chunk = block[: size - sent]
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        if sent >= size:
            conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # it answered and closed: the answer is waiting to be read
    try:
        status = conn.getresponse().status
    except (http.client.HTTPException, OSError) as err:
        status = type(err).__name__
    took = time.perf_counter() - started
    conn.close()
    outcome.recover_s = took
    outcome.failed = status != 415
    outcome.note = f"answer {status} after {took:.2f} s, with {sent / (1 << 20):.0f} MiB of {size >> 20} MiB sent"
    return outcome


def wrong_keys(d: Deployment, key: str, n: int = 1000) -> Outcome:
    import collections

    import httpx

    outcome = Outcome(f"{n:,} wrong keys from one address")
    prefix = key.rsplit("_", 1)[0]  # a real key id with wrong secrets: the costlier check
    codes: collections.Counter = collections.Counter()
    with httpx.Client(base_url=d.url, timeout=30) as client:
        started = time.perf_counter()
        for i in range(n):
            codes[client.get("/v1/jobs", headers={"Authorization": f"Bearer {prefix}_wrong{i:04d}"}).status_code] += 1
        took = time.perf_counter() - started
        flood_over = time.time()
        good = {"Authorization": f"Bearer {key}"}
        _wait(lambda: client.get("/v1/jobs", headers=good).status_code == 200, 300, "the right key served", 0.1)
        outcome.recover_s = time.time() - flood_over
    outcome.failed = codes[401] > 100
    outcome.note = (f"{codes[401]} x 401, {codes[429]} x 429, other {sum(codes.values()) - codes[401] - codes[429]}"
                    f" in {took:.1f} s ({n / took:.0f} req/s); then the right key waited")
    return outcome


SCENARIOS = ("worker-back", "worker-gone", "redis-emptied", "gateway-upload", "db-outage",
             "worker-renamed", "oversized-config", "non-archive", "wrong-keys")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="short lease and recovery interval")
    parser.add_argument("--epochs", type=int, default=150, help="length of each training job")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios, in this order: {','.join(SCENARIOS)}")
    parser.add_argument("--keep", action="store_true", help="keep the data folder and logs")
    args = parse_args(parser, {"fast": True, "epochs": 20})
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := sorted(set(chosen) - set(SCENARIOS)):
        raise SystemExit(f"--only: unknown scenario(s) {', '.join(unknown)}; expected some of {', '.join(SCENARIOS)}")
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed")

    from bench.tcp_proxy import TcpProxy

    folder = Path(tempfile.mkdtemp(prefix="mcvae-chaos-"))
    database, drop_database = _temp_postgres(args.postgres)
    if database is None:
        raise SystemExit("PostgreSQL is needed")
    host, port = database.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)
    proxy = TcpProxy(host, int(port))  # the gateway and workers reach the database through it
    redis_port = _free_port(6390)
    env = {"MCVAE_DATA_DIR": str(folder / "data"), "MCVAE_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
           "MCVAE_DATABASE_URL": database, "MCVAE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MCVAE_ALLOW_PATH_SOURCES": "false", "MCVAE_RATE_LIMIT_PER_MINUTE": "100000",
           "MCVAE_RATE_LIMIT_BURST": "10000"}
    if args.fast:
        env.update({"MCVAE_LEASE_SECONDS": "6", "MCVAE_HEARTBEAT_SECONDS": "1", "MCVAE_RECOVERY_INTERVAL": "2"})
    os.environ.update(env)  # this process watches the records directly, never through the proxy

    import httpx

    import workers
    from service.keys import create_key
    from workers import sweeper

    settings = workers.get_settings()
    d = Deployment(folder, {**env, "MCVAE_DATABASE_URL": proxy.url_for(database)}, redis_port, _free_port(8800))
    outcomes: list[Outcome] = []
    try:
        d.start_redis()
        d.start_gateway()
        for name in ("chaos-a", "chaos-b"):
            d.start_worker(name)
        key = create_key("chaos")
        api = httpx.Client(base_url=d.url, headers={"Authorization": f"Bearer {key}"}, timeout=300)
        cohort = cohort_zip(folder / "cohort", 6, 3, 16)
        r = api.post("/v1/datasets", params={"wait": 120}, content=cohort,
                     headers={"Content-Type": "application/zip"})
        assert r.status_code == 201, r.text
        dataset = r.json()["id"]
        started = time.time()
        one = _train(api, dataset, args.epochs)
        job = workers.wait(one, timeout=600)
        print(f"one training job alone: {job.finished_at.timestamp() - started:.1f} s ({job.state})")

        run = {"worker-back": lambda: worker_back(d, api, dataset, args.epochs),
               "worker-gone": lambda: worker_gone(d, api, dataset, args.epochs),
               "redis-emptied": lambda: redis_emptied(d, api, dataset, args.epochs),
               "gateway-upload": lambda: gateway_mid_upload(d, api, cohort),
               "db-outage": lambda: database_outage(d, api, dataset, args.epochs, proxy),
               "worker-renamed": lambda: worker_renamed(d, api, dataset, args.epochs),
               "oversized-config": lambda: oversized_config(d, api, dataset),
               "non-archive": lambda: non_archive(d, key),
               "wrong-keys": lambda: wrong_keys(d, key)}
        for name in [s for s in SCENARIOS if s in chosen]:
            print(f"-- {name}", flush=True)
            outcome = run[name]()
            outcome.bytes_left = _debris_bytes(settings.artifacts)
            outcomes.append(outcome)
            print(f"   {outcome}", flush=True)

        zero = settings.model_copy(update={k: 0.0 for k in (
            "staging_retention", "scratch_retention", "checkpoint_retention", "upload_retention",
            "cache_retention")})
        removed = sweeper.sweep(zero)
        store = workers.ArtifactStore(settings.artifacts)
        leftovers = ([f".staging/{p.name}" for p in (store.root / ".staging").iterdir()]
                     + [f".outcomes/{p.name}" for p in (store.root / ".outcomes").glob("*")]
                     + store.list("checkpoint") + store.list("dataset", "dataset-upload-")
                     + [f".trash/{p.name}" for p in (store.root / ".trash").glob("*")])
    finally:
        d.stop()
        proxy.close()
        workers.db.dispose_engines()
        drop_database()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    where = machine("cpu")
    mode = ("fast: lease 6 s, heartbeat 1 s, recovery every 2 s" if args.fast else
            f"defaults: lease {settings.lease_seconds:g} s, heartbeat {settings.heartbeat_seconds:g} s, "
            f"recovery every {settings.recovery_interval:g} s, visibility timeout {settings.visibility_timeout} s")
    print(f"\nchaos: gateway + 2 workers x 1 process, private redis-server :{redis_port}, PostgreSQL "
          f"behind a TCP proxy; {mode}\n{where}\n")

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    print(f"{'scenario':<44} {'jobs':>4} {'ok':>3} {'lost':>4} {'twice':>5} {'recover s':>9} "
          f"{'bytes left':>10}  note")
    for o in outcomes:
        print(f"{o.scenario:<44} {o.submitted:>4} {o.succeeded:>3} {o.lost:>4} {o.duplicated:>5} "
              f"{fmt(o.recover_s if o.recover_s is not None else o.takeover_s or o.requeued_s):>9} "
              f"{o.bytes_left if o.bytes_left is not None else '-':>10}  {'FAILED: ' if o.failed else ''}{o.note}")
    print("\nsweep removed: " + ", ".join(f"{len(v)} {k}" for k, v in removed.items()))
    print(f"left after the sweep (staging, kept outcomes, checkpoints, upload copies, trash): {leftovers or 'nothing'}")
    out = write_result("chaos" + ("_fast" if args.fast else "") + ("" if set(chosen) == set(SCENARIOS) else "_some"), {
        "machine": where, "mode": mode, "outcomes": [o.__dict__ for o in outcomes],
        "swept": {k: len(v) for k, v in removed.items()}, "leftovers": leftovers})
    print(f"wrote {out}")
    bad = [o for o in outcomes if o.lost or o.duplicated or o.failed]
    if bad or leftovers:
        raise SystemExit("FAILED: jobs lost or duplicated, a scenario's check failed, or debris left after the sweep")

if __name__ == "__main__":
    main()
