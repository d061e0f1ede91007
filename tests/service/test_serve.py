"""`serve()` with no broker configured: one command gives a working service (gateway plus an
embedded worker per queue on the SQLite broker, so an upload never waits behind training), and
stopping it stops the workers too."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import zip_folder

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_without_a_broker_runs_jobs_on_an_embedded_worker(tmp_path, demo_cohort, stop_signal):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCVAE_")}
    env.update(MCVAE_DATA_DIR=str(tmp_path / "data"), MCVAE_TORCH_THREADS="1", OMP_NUM_THREADS="1")
    port = _free_port()
    code = f"from service.serve import serve; serve(port={port})"
    server = subprocess.Popen([sys.executable, "-c", code],
                              env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                ready = httpx.get(f"{url}/readyz")
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "serve() did not become ready"
            time.sleep(0.5)
        assert ready.json()["checks"]["workers"]["detail"] == "2 embedded workers"
        if stop_signal == signal.SIGINT:  # once is enough: the CLI agrees with /readyz
            def mcvae(*args):
                return subprocess.run([sys.executable, "-m", "mcvae_cli.main", *args], env=env, cwd=REPO,
                                      capture_output=True, text=True, timeout=120, check=False)

            doctor, ping = mcvae("doctor", "--timeout", "1"), mcvae("worker-ping")
            assert "[ok] at least one worker answers (2 embedded workers)" in doctor.stdout, doctor.stdout
            assert ping.returncode == 0 and ping.stdout.strip() == "2 embedded workers", ping.stderr
        children = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True,
                                  check=True).stdout.split()
        worker_pids = [int(p) for p in children]
        assert len(worker_pids) == 2, children
        make_key = "from service.keys import create_key; print(create_key('solo'))"
        key = subprocess.run([sys.executable, "-c", make_key],
                             env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        r = httpx.post(f"{url}/v1/datasets", params={"wait": 60}, headers={"X-API-Key": key}, timeout=90,
                       content=zip_folder(demo_cohort))
        assert r.status_code == 201, r.text
        assert r.json()["classes"] == {"AD": 3, "CN": 6}
        if stop_signal == signal.SIGTERM:  # once is enough: an upload does not wait behind training
            headers = {"X-API-Key": key}
            train = httpx.post(f"{url}/v1/models", headers=headers, timeout=30, json={
                "dataset": r.json()["id"], "label": "CN", "model": {"channels": [4, 8], "latent_dims": [4]},
                "preprocess": {"spatial_dims": 3, "target_shape": [16, 16, 16], "target_spacing": 12.0},
                "sampler": {"kind": "mala", "n_steps": 2},
                "train": {"pretrain_epochs": 2000, "epochs": 2000, "batch_size": 4}})
            assert train.status_code == 202, train.text
            job = f"{url}/v1/jobs/{train.json()['job_id']}"
            deadline = time.monotonic() + 90
            while httpx.get(job, headers=headers).json()["state"] != "running":
                assert time.monotonic() < deadline, "the training job did not start"
                time.sleep(0.5)
            second = httpx.post(f"{url}/v1/datasets", params={"wait": 60}, headers=headers, timeout=90,
                                content=zip_folder(demo_cohort))
            assert second.status_code == 201, second.text
            assert httpx.get(job, headers=headers).json()["state"] == "running"  # still training meanwhile
    finally:
        server.send_signal(stop_signal)
        try:
            server.wait(timeout=45)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            raise
    assert server.returncode == 0
    assert not (tmp_path / "data" / "embedded-worker.pid").exists()  # nothing claims a worker now
    time.sleep(0.5)
    for worker_pid in worker_pids:
        assert not Path(f"/proc/{worker_pid}").exists(), "an embedded worker outlived serve()"
