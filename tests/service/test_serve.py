"""`serve()` with no broker configured: one command gives a working service (gateway plus an
embedded worker on the SQLite broker), and stopping it stops the worker too."""

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
        assert ready.json()["checks"]["workers"]["detail"] == "1 embedded worker"
        if stop_signal == signal.SIGINT:  # once is enough: the CLI agrees with /readyz
            def mcvae(*args):
                return subprocess.run([sys.executable, "-m", "mcvae_cli.main", *args], env=env, cwd=REPO,
                                      capture_output=True, text=True, timeout=120, check=False)

            doctor, ping = mcvae("doctor", "--timeout", "1"), mcvae("worker-ping")
            assert "[ok] at least one worker answers (1 embedded worker)" in doctor.stdout, doctor.stdout
            assert ping.returncode == 0 and ping.stdout.strip() == "1 embedded worker", ping.stderr
        children = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True,
                                  check=True).stdout.split()
        [worker_pid] = [int(p) for p in children]
        make_key = "from service.keys import create_key; print(create_key('solo'))"
        key = subprocess.run([sys.executable, "-c", make_key],
                             env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        r = httpx.post(f"{url}/v1/datasets", params={"wait": 60}, headers={"X-API-Key": key}, timeout=90,
                       content=zip_folder(demo_cohort))
        assert r.status_code == 201, r.text
        assert r.json()["classes"] == {"AD": 3, "CN": 6}
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
    assert not Path(f"/proc/{worker_pid}").exists(), "the embedded worker outlived serve()"
