"""Synchronous sampling under upload load: does a client waiting for one scan queue behind ingest
jobs?

One worker (``--concurrency`` pool processes) on Redis (a private key prefix) with PostgreSQL
records. A loader keeps ``--backlog`` ingest jobs of a demo cohort (24 scans of 64^3) queued or running (what
uploads cause) while a client asks for one scan every 0.5 s and waits for it, for
``--duration`` seconds in each of two modes:

- ``shared cpu queue`` (as before issue 10): the sampling job goes to the ``cpu`` queue with
  everything else, at the same priority, and waits its turn;
- ``interactive queue``: ``submit(..., interactive=True)`` as the gateway's synchronous route
  does now: its own queue, which the worker serves first, at the front.

Printed per mode: sampling latency (submit to done) p50/p90/p99, the sampling job's own run time
(started to finished), and the ingest jobs finished meanwhile.

    python bench/interactive_latency.py [--duration 60] [--backlog 6] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine, parse_args, write_result
from bench.queue_overhead import _cleanup_deployment, _temp_postgres, _tiny_model


def _load(mode_interactive: bool, duration: float, backlog: int, upload: str, model_id: str):
    import workers

    stop = threading.Event()
    ingests: list[str] = []

    def loader() -> None:
        # Keep the backlog of ingest jobs: each upload adds one.
        while not stop.is_set():
            pending = [j for j in ingests if not workers.get(j).done]
            for _ in range(backlog - len(pending)):
                ingests.append(workers.submit("ingest", {"source": upload}).id)
            time.sleep(0.2)

    thread = threading.Thread(target=loader, daemon=True)
    thread.start()
    time.sleep(3)  # let the backlog build
    latencies, run_times = [], []
    stop_at = time.monotonic() + duration
    while time.monotonic() < stop_at:
        asked = time.perf_counter()
        job = workers.submit("sample", {"model": model_id, "n": 1}, interactive=mode_interactive)
        done = workers.wait(job.id, timeout=600, poll=0.05)
        latencies.append(time.perf_counter() - asked)
        if done.state == "succeeded":
            run_times.append((done.finished_at - done.started_at).total_seconds())
        time.sleep(0.5)
    stop.set()
    thread.join()
    for job_id in ingests:  # leave the next mode an idle worker
        workers.cancel(job_id)
    finished = sum(workers.get(j).state == "succeeded" for j in ingests)
    for job_id in ingests:
        try:
            workers.wait(job_id, timeout=300, poll=0.2)
        except TimeoutError:
            pass
    return latencies, run_times, finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per mode")
    parser.add_argument("--backlog", type=int, default=6, help="ingest jobs kept queued or running")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--scans", type=int, default=24, help="scans per uploaded cohort")
    parser.add_argument("--size", type=int, default=64, help="edge of each scan (voxels)")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parse_args(parser, {"duration": 3.0, "backlog": 2, "scans": 6, "size": 16, "concurrency": 1})

    data_dir = Path(tempfile.mkdtemp(prefix="mcvae-interactive-"))
    prefix = f"mcvae-interactive-{uuid.uuid4().hex[:8]}:"
    database, drop_database = _temp_postgres(args.postgres)
    env = {"MCVAE_DATA_DIR": str(data_dir / "data"), "MCVAE_BROKER_URL": args.broker,
           "MCVAE_REDIS_KEY_PREFIX": prefix, "MCVAE_PROGRESS_INTERVAL": "0.5",
           "MCVAE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    if database:
        env["MCVAE_DATABASE_URL"] = database
    os.environ.update(env)

    import workers
    from models.data import make_demo_cohort

    store = workers.ArtifactStore(workers.get_settings().artifacts)
    n_ad = max(1, args.scans // 3)
    make_demo_cohort(data_dir / "cohort", n_control=args.scans - n_ad, n_ad=n_ad,
                     shape=(args.size,) * 3, seed=0)
    # An upload copy that is never consumed: ingest removes only dataset-upload-* sources.
    upload = store.put_dir("dataset", data_dir / "cohort").id
    model_id = _tiny_model(store)
    log = data_dir / "worker.log"
    worker = workers.start_worker_process(("gpu", "cpu"), concurrency=args.concurrency, device="cpu",
                                          hostname=f"interactive-{uuid.uuid4().hex[:6]}@%h", env=env,
                                          log_path=str(log))
    results = {}
    try:
        deadline = time.monotonic() + 120
        while "ready." not in log.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        one = workers.wait(workers.submit("ingest", {"source": upload}).id, timeout=300)
        ingest_s = (one.finished_at - one.started_at).total_seconds()
        for mode, interactive in (("shared cpu queue", False), ("interactive queue", True)):
            latencies, run_times, finished = _load(interactive, args.duration, args.backlog, upload, model_id)
            q = statistics.quantiles(latencies, n=100, method="inclusive")
            results[mode] = {"requests": len(latencies), "p50_s": statistics.median(latencies),
                             "p90_s": q[89], "p99_s": q[98], "max_s": max(latencies),
                             "run_s": statistics.median(run_times), "ingests_finished": finished}
    finally:
        try:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        except (ProcessLookupError, Exception):  # noqa: BLE001
            os.killpg(worker.pid, signal.SIGKILL)
        _cleanup_deployment(args.broker, prefix, drop_database)
        shutil.rmtree(data_dir, ignore_errors=True)

    where = machine("cpu")
    print(f"\nsynchronous sampling (n=1) under upload load: {args.backlog} ingest jobs of {args.scans} scans "
          f"({args.size}^3) kept queued, one ingest alone {ingest_s:.1f} s; 1 worker x {args.concurrency} processes; "
          f"{args.duration:g} s per mode\n{where}\n")
    print(f"{'mode':<20} {'requests':>8} {'p50 s':>7} {'p90 s':>7} {'p99 s':>7} {'max s':>7} "
          f"{'run s':>6} {'ingests done':>12}")
    for mode, r in results.items():
        print(f"{mode:<20} {r['requests']:>8} {r['p50_s']:>7.2f} {r['p90_s']:>7.2f} {r['p99_s']:>7.2f} "
              f"{r['max_s']:>7.2f} {r['run_s']:>6.2f} {r['ingests_finished']:>12}")
    out = write_result("interactive_latency", {"machine": where, "backlog": args.backlog,
                                               "concurrency": args.concurrency, "duration_s": args.duration,
                                               "ingest_alone_s": ingest_s, "modes": results})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
