"""What the job queue adds to a small sampling job, and how many trivial jobs it sustains.

Latency: for a sampling job of ``--n`` scans from a tiny model, the median time from ``submit``
to the job record reading ``succeeded``, minus the median time of the same handler called
in-process (load the model, sample, write NIfTI + sidecars into the artifact store). Goal: under
100 ms over Redis. Throughput: ``--jobs`` sampling jobs of one scan submitted at once, finished
per second by one worker process of ``--concurrency`` pool processes.

Needs Redis (``--broker``); job records go to a temporary PostgreSQL database when
``--postgres`` is reachable (as deployed), else to SQLite.

    python bench/queue_overhead.py [--repeats 30] [--jobs 100] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine, parse_args, write_result


def _temp_postgres(admin_url: str):
    try:
        import psycopg

        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except Exception as err:  # noqa: BLE001 - any failure means: use SQLite instead
        print(f"PostgreSQL not reachable ({err}); job records on SQLite")
        return None, None
    name = f"mcvae_bench_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    return url, lambda: (admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'), admin.close())


def _cleanup_deployment(broker: str, prefix: str, drop_database) -> None:
    """Remove this run's Redis keys, database connections and temporary database."""
    import redis

    import workers

    client = redis.Redis.from_url(broker)
    stale = list(client.scan_iter(match=f"{prefix}*"))
    if stale:
        client.delete(*stale)
    workers.db.dispose_engines()
    if drop_database:
        drop_database()


def _tiny_model(store, data_shape=(1, 8, 8)) -> str:
    import torch

    from models import ModelConfig, SamplerConfig, build_model, build_sampler, save

    torch.manual_seed(0)
    model = build_model(ModelConfig(data_shape=data_shape, arch="mlp", latent_dims=[4], hidden=(32,)))
    sampler = build_sampler(SamplerConfig(kind="none"), model.latent_dim)
    meta = {"label": "AD", "preprocess": {"spatial_dims": 2, "target_shape": list(data_shape[1:]),
                                          "target_spacing": None}}
    model_id = store.new_id("model")
    with store.writer("model", model_id, meta=meta) as payload:
        save(payload, model, sampler, meta)
    return model_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--n", type=int, default=8, help="scans per sampling job")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parse_args(parser, {"n": 2, "repeats": 2, "jobs": 5, "concurrency": 1})

    data_dir = Path(tempfile.mkdtemp(prefix="mcvae-bench-"))
    prefix = f"mcvae-bench-{uuid.uuid4().hex[:8]}:"
    database, drop_database = _temp_postgres(args.postgres)
    env = {"MCVAE_DATA_DIR": str(data_dir), "MCVAE_BROKER_URL": args.broker,
           "MCVAE_REDIS_KEY_PREFIX": prefix, "MCVAE_PROGRESS_INTERVAL": "0.5",
           "MCVAE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    if database:
        env["MCVAE_DATABASE_URL"] = database
    os.environ.update(env)

    import torch

    import workers
    from workers import ArtifactStore, get_settings
    from workers.context import JobContext
    from workers.handlers import sample
    from workers.params import SampleParams

    torch.set_num_threads(1)  # as in the worker
    settings = get_settings()
    store = ArtifactStore(settings.artifacts)
    model_id = _tiny_model(store)
    params = {"model": model_id, "n": args.n}

    # In-process: the same handler, no queue, no job record.
    local = []
    for i in range(args.repeats + 3):
        start = time.perf_counter()
        sample(JobContext(f"local{i}", store, settings=settings), SampleParams(**params))
        local.append(time.perf_counter() - start)
    local = local[3:]

    worker = workers.start_worker_process(["cpu"], concurrency=args.concurrency, device="cpu",
                                          hostname=f"bench-{uuid.uuid4().hex[:6]}@%h",
                                          env=env, log_path=str(data_dir / "worker.log"))
    try:
        deadline = time.monotonic() + 120
        while "ready." not in (data_dir / "worker.log").read_text(errors="replace"):
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit(f"worker did not start:\n{(data_dir / 'worker.log').read_text()[-2000:]}")
            time.sleep(0.2)
        for _ in range(3):  # warm-up: first task in each pool process, connection pools
            workers.wait(workers.submit("sample", params).id, timeout=60, poll=0.002)

        total, queued, running = [], [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            job = workers.submit("sample", params)
            job = workers.wait(job.id, timeout=60, poll=0.002)
            total.append(time.perf_counter() - start)
            assert job.state == "succeeded", job.error
            queued.append((job.started_at - job.created_at).total_seconds())
            running.append((job.finished_at - job.started_at).total_seconds())

        start = time.perf_counter()
        batch = [workers.submit("sample", {**params, "n": 1}) for _ in range(args.jobs)]
        submitted = time.perf_counter() - start
        finished = [workers.wait(job.id, timeout=300, poll=0.01) for job in batch]
        elapsed = time.perf_counter() - start
        assert all(job.state == "succeeded" for job in finished)
        hosts = {job.worker for job in finished}
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except Exception:  # noqa: BLE001
            worker.kill()
        _cleanup_deployment(args.broker, prefix, drop_database)

    med = statistics.median
    overhead_ms = (med(total) - med(local)) * 1000
    rows = [
        ("in-process handler (median)", f"{med(local) * 1000:.1f} ms"),
        ("submit -> succeeded over Redis (median)", f"{med(total) * 1000:.1f} ms"),
        ("  of which: created -> started", f"{med(queued) * 1000:.1f} ms"),
        ("  of which: started -> finished", f"{med(running) * 1000:.1f} ms"),
        ("queue overhead (median difference)", f"{overhead_ms:.1f} ms  (goal < 100 ms)"),
        (f"throughput, {args.jobs} trivial jobs", f"{args.jobs / elapsed:.1f} jobs/s"),
        ("submit rate", f"{args.jobs / submitted:.1f} jobs/s"),
    ]
    where = machine("cpu")
    records = "PostgreSQL" if database else "SQLite"
    print(f"\nqueue overhead: sampling n={args.n} from a tiny model; Redis broker, {records} records; "
          f"1 worker x {args.concurrency} processes\n{where}\n")
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    out = write_result("queue_overhead", {
        "machine": where, "broker": "redis", "records": records, "n": args.n,
        "repeats": args.repeats, "concurrency": args.concurrency, "workers_seen": len(hosts),
        "in_process_ms": med(local) * 1000, "submit_to_result_ms": med(total) * 1000,
        "created_to_started_ms": med(queued) * 1000, "started_to_finished_ms": med(running) * 1000,
        "overhead_ms": overhead_ms, "overhead_p90_ms": (statistics.quantiles(total, n=10)[-1] - med(local)) * 1000,
        "throughput_jobs_per_s": args.jobs / elapsed, "submit_jobs_per_s": args.jobs / submitted,
        "trivial_jobs": args.jobs,
    })
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
