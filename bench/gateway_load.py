"""The REST gateway under load: concurrent clients each asking a trained model for one scan.

``--clients`` clients (default 32) each send ``POST /v1/models/{id}/samples {"n": 1}`` in a loop
for ``--duration`` seconds against uvicorn on loopback, with a real Celery worker behind it
(Redis broker, PostgreSQL records when reachable, as deployed). Every answer must be a NIfTI.
Printed: requests per second, p50/p90/p99 latency, errors (goal: none), and the latency above
the bare model call (``model.sample(1)`` with the model in memory) and above what the worker
does per job in-process (load the model, sample, write NIfTI + sidecar).

The model is trained through the gateway on the demo cohort (32^3, a few epochs): a real trained
model, not a random one, though not a good one.

    python bench/gateway_load.py [--duration 30] [--clients 32] [--worker-concurrency 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine, parse_args, write_result
from bench.queue_overhead import _cleanup_deployment, _temp_postgres

TRAIN = {"label": "AD",
         "preprocess": {"spatial_dims": 3, "target_shape": [32, 32, 32], "target_spacing": [6.0, 6.0, 6.0]},
         "model": {"channels": [4, 8, 16], "latent_dims": [8]},
         "sampler": {"kind": "mala", "n_steps": 2},
         "train": {"pretrain_epochs": 20, "epochs": 5, "batch_size": 4}}
QUICK_TRAIN = {**TRAIN, "train": {"pretrain_epochs": 2, "epochs": 1, "batch_size": 4}}  # --quick: any model serves


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)
    return value


def _bare_call_ms(model_dir: Path, repeats: int = 50) -> tuple[float, float]:
    """Median ms of model.sample(1) (model in memory), and of load + sample + write NIfTI."""
    import torch

    from models import load
    from models.data import PreprocessConfig, target_affine, write_scan

    torch.set_num_threads(1)  # as in the worker
    model, _, meta = load(model_dir)
    affine = target_affine(PreprocessConfig(**meta["preprocess"]))
    gen = torch.Generator().manual_seed(0)
    bare, full = [], []
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats + 3):
            start = time.perf_counter()
            model.sample(1, generator=gen)
            bare.append(time.perf_counter() - start)
        for i in range(repeats // 2 + 2):
            start = time.perf_counter()
            m, _, _ = load(model_dir)
            scan = m.sample(1, generator=gen)[0, 0].numpy()
            write_scan(Path(tmp) / f"s{i}.nii.gz", scan, affine)
            full.append(time.perf_counter() - start)
    return statistics.median(bare[3:]) * 1000, statistics.median(full[2:]) * 1000


async def _load(url: str, key: str, model_id: str, clients: int, duration: float):
    import httpx

    latencies: list[float] = []
    errors: Counter = Counter()
    stop_at = time.monotonic() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=120, limits=limits) as client:

        async def one_client(k: int) -> None:
            i = 0
            while time.monotonic() < stop_at:
                start = time.perf_counter()
                try:
                    r = await client.post(f"/v1/models/{model_id}/samples",
                                          json={"n": 1, "seed": k * 100_000 + i})
                    ok = r.status_code == 200 and r.content[:2] == b"\x1f\x8b"
                    if not ok:
                        errors[f"HTTP {r.status_code}"] += 1
                except httpx.HTTPError as err:
                    ok = False
                    errors[type(err).__name__] += 1
                if ok:
                    latencies.append(time.perf_counter() - start)
                i += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client(k) for k in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


def _cpu_seconds(pgid: int) -> float:
    """CPU time used so far by every process of a process group (a worker and its pool)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state ppid pgrp ... utime(11) stime(12)
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--worker-concurrency", type=int, default=2, help="worker pool processes")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--keep", action="store_true", help="keep the data folder (for a look at logs)")
    args = parse_args(parser, {"duration": 3.0, "clients": 4, "worker_concurrency": 1})

    data_dir = Path(tempfile.mkdtemp(prefix="mcvae-gw-bench-"))
    prefix = f"mcvae-gw-bench-{uuid.uuid4().hex[:8]}:"
    database, drop_database = _temp_postgres(args.postgres)
    env = {"MCVAE_DATA_DIR": str(data_dir / "data"), "MCVAE_BROKER_URL": args.broker,
           "MCVAE_REDIS_KEY_PREFIX": prefix, "MCVAE_PROGRESS_INTERVAL": "0.5",
           "MCVAE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1",
           # One key for every client: the rate limit must not be what is measured.
           "MCVAE_RATE_LIMIT_PER_MINUTE": "10000000", "MCVAE_RATE_LIMIT_BURST": "100000"}
    if database:
        env["MCVAE_DATABASE_URL"] = database
    os.environ.update(env)

    import httpx

    import workers
    from bench.cohorts import cohort_zip  # after the environment above: it imports torch
    from service.keys import create_key

    worker_log, gateway_log = data_dir / "worker.log", data_dir / "gateway.log"
    worker = workers.start_worker_process(("gpu", "cpu"), concurrency=args.worker_concurrency, device="cpu",
                                          hostname=f"bench-{uuid.uuid4().hex[:6]}@%h", env=env,
                                          log_path=str(worker_log))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with open(gateway_log, "wb") as out:
        gateway = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
                                    "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
                                   env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        key = create_key("bench")
        _wait(lambda: "ready." in worker_log.read_text(errors="replace") or worker.poll() is not None,
              120, "the worker")
        _wait(lambda: _ready(url) or gateway.poll() is not None, 60, "the gateway")
        if worker.poll() is not None or gateway.poll() is not None:
            raise SystemExit(f"start-up failed; see {worker_log} and {gateway_log}")
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300)
        r = api.post("/v1/datasets", params={"wait": 120, "name": "demo-32"},
                     content=cohort_zip(data_dir / "cohort", 8, 4, 32), headers={"Content-Type": "application/zip"})
        assert r.status_code == 201, r.text
        r = api.post("/v1/models", json={"dataset": r.json()["id"], **(QUICK_TRAIN if args.quick else TRAIN)})
        assert r.status_code == 202, r.text
        model_id = r.json()["id"]
        started = time.perf_counter()
        model = _wait(lambda: (m := api.get(f"/v1/models/{model_id}").json())["state"] != "training" and m,
                      600, "training")
        assert model["state"] == "ready", model
        print(f"trained {model_id} in {time.perf_counter() - started:.1f} s "
              f"(final loss {model['metrics']['final'].get('loss', float('nan')):.4g})")
        for _ in range(4):  # warm-up: both pool processes, connection pools
            assert api.post(f"/v1/models/{model_id}/samples", json={"n": 1}).status_code == 200
        store = workers.ArtifactStore(workers.get_settings().artifacts)
        bare_ms, in_process_ms = _bare_call_ms(store.path(model_id))

        single, single_errors, _ = asyncio.run(_load(url, key, model_id, 1, min(5.0, args.duration / 3)))
        cpu_before = {name: _cpu_seconds(p.pid) for name, p in (("gateway", gateway), ("worker", worker))}
        latencies, errors, elapsed = asyncio.run(_load(url, key, model_id, args.clients, args.duration))
        cpu = {name: (_cpu_seconds(p.pid) - cpu_before[name]) / elapsed
               for name, p in (("gateway", gateway), ("worker", worker))}
    finally:
        for proc in (gateway, worker):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        _cleanup_deployment(args.broker, prefix, drop_database)
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)

    n_ok, n_err = len(latencies), sum(errors.values())
    q = statistics.quantiles(latencies, n=100) if n_ok >= 2 else [float("nan")] * 99
    p50, p90, p99 = (statistics.median(latencies) * 1000, q[89] * 1000, q[98] * 1000)
    where = machine("cpu")
    records = "PostgreSQL" if database else "SQLite"
    single_p50 = statistics.median(single) * 1000 if single else float("nan")
    rows = [
        ("one client alone: p50 latency",
         f"{single_p50:.0f} ms ({len(single)} requests, {sum(single_errors.values())} errors)"),
        ("  above the bare model call", f"{single_p50 - bare_ms:.0f} ms"),
        ("  above the in-process job", f"{single_p50 - in_process_ms:.0f} ms"),
        (f"{args.clients} clients: requests answered with a NIfTI", f"{n_ok} in {elapsed:.1f} s"),
        ("requests per second", f"{n_ok / elapsed:.1f}"),
        ("latency p50 / p90 / p99", f"{p50:.0f} / {p90:.0f} / {p99:.0f} ms"),
        ("errors", f"{n_err}" + (f" ({dict(errors)})" if n_err else "  (goal: none)")),
        ("bare model call, sample(1) in memory", f"{bare_ms:.1f} ms"),
        ("in-process job: load + sample + write", f"{in_process_ms:.1f} ms"),
        ("p50 above the bare model call", f"{p50 - bare_ms:.0f} ms"),
        ("p50 above the in-process job", f"{p50 - in_process_ms:.0f} ms"),
        ("CPU cores busy: gateway / worker",
         (f"{cpu['gateway']:.2f} / {cpu['worker']:.2f} (of {os.cpu_count()}, shared with the "
          "clients, Redis and PostgreSQL)")),
    ]
    print(f"\ngateway load: {args.clients} clients x {args.duration:g} s, one 32^3 scan per request; "
          f"uvicorn (1 process) on loopback; Redis broker, {records} records; "
          f"1 worker x {args.worker_concurrency} processes\n{where}\n")
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    out = write_result("gateway_load", {
        "machine": where, "clients": args.clients, "duration_s": args.duration, "records": records,
        "worker_concurrency": args.worker_concurrency, "requests": n_ok, "errors": n_err,
        "error_kinds": dict(errors), "rps": n_ok / elapsed, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
        "bare_call_ms": bare_ms, "in_process_job_ms": in_process_ms,
        "p50_above_bare_ms": p50 - bare_ms, "p50_above_in_process_ms": p50 - in_process_ms,
        "single_client_p50_ms": single_p50, "single_client_above_bare_ms": single_p50 - bare_ms,
        "cpu_cores_gateway": cpu["gateway"], "cpu_cores_worker": cpu["worker"],
    })
    print(f"\nwrote {out}")


def _ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
