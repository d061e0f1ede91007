"""The images built and run for real: a gateway container and a CPU worker container (podman,
host network) against this machine's Redis and PostgreSQL. Through the containers: database
upgrade, an API key, an upload, an augmentation of a small demo cohort followed over SSE, the
result downloaded and read back; health checks; the non-root user and the artifact volume.

The containers run what docker-compose.yml says (image, command, environment, volume), with the
host's Redis and PostgreSQL in place of compose's own (their images cannot be pulled here), a
private database and Redis key prefix, and a gateway port of its own (host network).
Skipped, with the reason, without podman or without Redis and PostgreSQL. Run: pytest -m deploy.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
import yaml

from tests.sse import read_sse

# A first build downloads and installs the images' packages: minutes, beyond the suite's 600 s.
pytestmark = [pytest.mark.deploy, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PODMAN = shutil.which("podman")
REDIS_URL = os.environ.get("MCVAE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_ADMIN = os.environ.get("MCVAE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# Small enough for about a minute on two CPU cores (the gateway tests' tiny augmentation), with
# aggregate draws: the stack is the subject here, and a model of 12 steps can move a variation (the
# default generator) too little from its subject to deliver it.
TINY_AUGMENT = {"generator": "aggregate", "preprocess": {"spatial_dims": 3, "target_shape": [16, 16, 16], "target_spacing": 12.0},
                "model": {"channels": [4, 8], "latent_dims": [4]},
                "sampler": {"kind": "mala", "n_steps": 2}, "pretrain_steps": 12, "mcmc_steps": 4, "check_steps": 10}
GATEWAY_HEALTH = ("import urllib.request; "
                  "urllib.request.urlopen('http://127.0.0.1:{port}/healthz', timeout=4)")


def _services_reachable() -> str:
    try:
        import psycopg
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
        psycopg.connect(POSTGRES_ADMIN, connect_timeout=3).close()
    except Exception as err:  # noqa: BLE001 - any failure: skip with the reason
        return f"Redis or PostgreSQL not reachable: {err}"
    return ""


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([PODMAN, *args], check=False, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} ... exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _free_port() -> int:
    """A free port in 18000-18999 (host network: the gateway binds the host's port itself)."""
    for port in random.sample(range(18000, 19000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 18000-18999")


def _compose_env(**overrides: str) -> dict[str, str]:
    """The environment compose gives gateway and worker, with this machine's services in place."""
    env = dict(COMPOSE["x-mcvae"]["environment"])
    env.update(overrides)
    return env


def _env_args(env: dict[str, str]) -> list[str]:
    return [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]


def _volume_args(service: str, volume: str) -> list[str]:
    """Compose's `artifacts:/data/artifacts` with the named volume of this run."""
    [mount] = COMPOSE["services"][service]["volumes"]
    name, target = mount.split(":", 1)
    assert name == "artifacts" and target == "/data/artifacts", mount
    return ["-v", f"{volume}:{target}"]


@pytest.fixture(scope="module")
def images() -> dict[str, float]:
    """Builds the images with docker/build-images.sh (layers cached after the first run)."""
    if PODMAN is None:
        pytest.skip("podman not installed (bash ../shared/tools/container-engine.sh installs it)")
    if why := _services_reachable():
        pytest.skip(why)
    start = time.monotonic()
    proc = subprocess.run(["bash", str(ROOT / "docker" / "build-images.sh"), "gateway", "worker"],
                          cwd=ROOT, check=False, capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "ENGINE": PODMAN})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    built = [line for line in proc.stdout.splitlines() if line.startswith("built ")]
    print("\n".join(built), f"\nbuild-images.sh: {time.monotonic() - start:.0f} s", file=sys.stderr)
    return {"build_s": time.monotonic() - start}


@pytest.fixture(scope="module")
def demo_cohort(tmp_path_factory) -> bytes:
    """6 CN and 3 AD scans of 16^3, zipped as a lab would upload them."""
    out = tmp_path_factory.mktemp("cohort") / "demo"
    code = ("import sys; from models.data import make_demo_cohort; "
            "make_demo_cohort(sys.argv[1], n_control=6, n_ad=3, shape=(16, 16, 16), seed=0)")
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, cwd=ROOT,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(out.rglob("*")):
            if path.is_file():
                zf.write(path, f"demo/{path.relative_to(out).as_posix()}")
    return buf.getvalue()


@pytest.fixture(scope="module")
def stack(images):
    import psycopg
    import redis

    run_id = uuid.uuid4().hex[:10]
    db_name, prefix = f"mcvae_deploy_{run_id}", f"mcvae-deploy-{run_id}:"
    volume, port = f"mcvae-deploy-{run_id}-artifacts", _free_port()
    names = {"gateway": f"mcvae-deploy-{run_id}-gateway", "worker": f"mcvae-deploy-{run_id}-worker"}
    admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True)
    admin.execute(f'CREATE DATABASE "{db_name}"')
    env = _compose_env(MCVAE_BROKER_URL=REDIS_URL, MCVAE_REDIS_KEY_PREFIX=prefix,
                       MCVAE_DATABASE_URL=f"{POSTGRES_ADMIN.rsplit('/', 1)[0]}/{db_name}",
                       MCVAE_TORCH_THREADS="1", OMP_NUM_THREADS="1", MCVAE_PROGRESS_INTERVAL="0.2",
                       MCVAE_SSE_POLL_SECONDS="0.2")
    podman("volume", "create", volume)
    base = ["run", "--network=host", *_env_args(env)]
    gateway_image = COMPOSE["services"]["gateway"]["image"]
    worker_image = COMPOSE["services"]["worker"]["image"]
    try:
        # compose's migrate service, then a key, both through the gateway image.
        migrate = podman(*base, "--rm", *_volume_args("migrate", volume), gateway_image,
                         *COMPOSE["services"]["migrate"]["command"])
        key = podman(*base, "--rm", gateway_image, "mcvae", "keys", "create", "--lab", "deploy-lab")
        gateway_cmd = [str(port) if a == "8000" else a for a in COMPOSE["services"]["gateway"]["command"]]
        gateway_cmd = ["127.0.0.1" if a == "0.0.0.0" else a for a in gateway_cmd]  # loopback only
        # The image's health check probes port 8000; on the host network the gateway has its own.
        podman(*base, "-d", "--name", names["gateway"], *_volume_args("gateway", volume),
               "--health-cmd", json.dumps(["python", "-c", GATEWAY_HEALTH.format(port=port)]),
               gateway_image, *gateway_cmd)
        podman(*base, "-d", "--name", names["worker"], *_volume_args("worker", volume),
               worker_image, *COMPOSE["services"]["worker"]["command"])
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:  # ready: database, broker and a worker that answers
            try:
                ready = httpx.get(f"{url}/readyz", timeout=5)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                logs = {n: podman("logs", c, check=False).stderr[-2000:] for n, c in names.items()}
                raise AssertionError(f"the stack did not become ready: {logs}")
            time.sleep(1)
        yield {"url": url, "key": key.stdout.strip(), "migrate": migrate, "names": names,
               "volume": volume, "port": port}
    finally:
        for container in names.values():
            podman("rm", "-f", "-t", "10", container, check=False)
        podman("volume", "rm", "-f", volume, check=False)
        admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        admin.close()
        client = redis.Redis.from_url(REDIS_URL)
        stale = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if stale:
            client.delete(*stale)


def test_gateway_image_carries_no_torch_and_runs_as_non_root(images):
    gateway = COMPOSE["services"]["gateway"]["image"]
    code = "import importlib.util, os; print(os.getuid(), importlib.util.find_spec('torch'))"
    out = podman("run", "--rm", "--network=host", gateway, "python", "-c", code).stdout.split()
    assert out == ["10001", "None"]


def test_a_root_owned_artifact_folder_stops_the_container_with_the_fix(images, tmp_path):
    """The volume-permission defect: a host folder owned by root mounted over /data/artifacts."""
    folder = tmp_path / "artifacts"
    folder.mkdir(mode=0o755)
    os.chown(folder, 0, 0)
    proc = podman("run", "--rm", "--network=host", "-v", f"{folder}:/data/artifacts",
                  COMPOSE["services"]["gateway"]["image"], "mcvae", "db", "upgrade", check=False)
    assert proc.returncode == 78, proc.stdout + proc.stderr
    message = [line for line in proc.stderr.splitlines() if line.startswith("mcvae:")]
    assert message and "cannot write to /data/artifacts (owner uid 0" in message[0], proc.stderr
    assert "chown -R 10001:10001" in message[0]


def test_migrate_and_key_through_the_gateway_image(stack):
    assert "database schema up to date" in stack["migrate"].stdout
    assert len(stack["key"]) > 20 and "\n" not in stack["key"]


def test_health_checks_pass_and_containers_run_as_the_image_user(stack):
    for role, container in stack["names"].items():
        proc = podman("healthcheck", "run", container, check=False, timeout=60)
        assert proc.returncode == 0, f"{role} unhealthy: {proc.stdout}{proc.stderr}"
        assert podman("exec", container, "id", "-u").stdout.strip() == "10001"
        [mount] = [m for m in json.loads(podman("inspect", container).stdout)[0]["Mounts"]
                   if m["Destination"] == "/data/artifacts"]
        assert mount["Type"] == "volume" and mount["Name"] == stack["volume"]
    ready = httpx.get(f"{stack['url']}/readyz", timeout=10).json()
    assert ready["status"] == "ready", ready


def test_upload_augment_follow_events_and_download(stack, demo_cohort):
    headers = {"Authorization": f"Bearer {stack['key']}"}
    with httpx.Client(base_url=stack["url"], headers=headers, timeout=180) as c:
        r = c.post("/v1/datasets", params={"name": "demo", "wait": 120},
                   files={"file": ("demo.zip", demo_cohort, "application/zip")})
        assert r.status_code == 201, r.text
        dataset = r.json()
        assert dataset["classes"] == {"AD": 3, "CN": 6}
        r = c.post("/v1/augmentations", json={"dataset": dataset["id"], "target": "balance",
                                              "config": TINY_AUGMENT})
        assert r.status_code == 202, r.text
        started = r.json()
        with c.stream("GET", started["events_url"], timeout=600) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = read_sse(stream)
        assert [n for n, _ in events][-1] == "end" and events[-1][1]["state"] == "succeeded", events[-3:]
        assert any(d.get("stage", "").startswith("training") for _, d in events)
        progress = [d["progress"] for n, d in events if n == "progress" and d.get("progress") is not None]
        assert progress == sorted(progress) and len(set(progress)) >= 3, progress
        final = c.get(f"/v1/augmentations/{started['id']}").json()
        assert final["synthetic_counts"] == {"AD": 3, "CN": 0}
        r = c.get(final["result_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    scans = [n for n in zf.namelist() if n.startswith("synthetic/AD/") and n.endswith(".nii.gz")]
    assert len(scans) == 3
    with tempfile.TemporaryDirectory() as tmp:
        for name in scans:
            path = Path(tmp) / Path(name).name
            path.write_bytes(zf.read(name))
            data = np.asarray(nib.load(path).dataobj)
            assert data.shape == (16, 16, 16) and np.isfinite(data).all()
    # The worker container wrote the result into the volume both mount, as the image's user.
    gateway = stack["names"]["gateway"]
    manifest = f"/data/artifacts/outputs/output-{started['id']}/manifest.json"
    assert podman("exec", gateway, "test", "-f", manifest, check=False).returncode == 0
    owners = podman("exec", gateway, "find", "/data/artifacts", "-printf", "%u\\n").stdout.split()
    assert len(owners) > 10 and set(owners) == {"mcvae"}, sorted(set(owners))
