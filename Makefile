# One entry point for every set-up step: `make test` and `make demo` work from a fresh clone.
# CI (.ci/run) runs `make lint test test-deploy`: ruff, the suite, then the container tests.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU machines take the local CPU build of torch; the CUDA image picks its own in docker/.
TORCH_PIN ?= torch==2.13.0

.PHONY: venv lint test test-fast test-deploy images demo bench device-wheels clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install "$(TORCH_PIN)"
	$(PY) -m pip install -e ".[dev]" "$(TORCH_PIN)"
	touch $@

venv: $(VENV)/.installed

# ruff with the rules of pyproject.toml ([tool.ruff]); CI runs it before the tests.
lint: venv
	$(VENV)/bin/ruff check .

# Everything but the container builds (733 tests, 20 of them the benchmarks' --quick runs: 13 min 56 s
# alone on the 2-core CI machine, 2026-12-03; 639 tests and 7 min 43 s before those runs).
test: venv
	$(PY) -m pytest tests -m "not deploy"

test-fast: venv
	$(PY) -m pytest tests -m "not slow and not deploy"

# The deploy tests only: build the images and run gateway + worker containers end to end
# (podman; skipped, with the reason, without it): 2-10 minutes, most of it building images.
test-deploy: venv
	$(PY) -m pytest tests/deploy -m deploy

# mcvae-gateway:latest and mcvae-worker:latest (podman, else docker); on machines without Docker
# Hub it builds from the local base of shared/tools/container-engine.sh. IMAGES=worker-cuda too.
IMAGES ?= gateway worker
images:
	docker/build-images.sh $(IMAGES)

demo: venv
	rm -rf mcvae-demo
	$(VENV)/bin/mcvae demo --out mcvae-demo

bench: venv
	$(PY) bench/sampler_cost.py
	$(PY) bench/likelihood.py

# Wheels a GPU machine without network needs besides python3 + torch (CUDA) to run
# bench/gpu_check.sh: what models/ imports for training and saving (pydantic, monai, numpy,
# safetensors; not nibabel/scipy, which only data loading needs) and pytest. Pinned to the
# versions the suite runs with here; cp311 manylinux x86_64 by default (DEVICE_PY=312 etc.).
# wheels/device/ is git-ignored: a device run carries it explicitly.
DEVICE_PY     ?= 311
DEVICE_WHEELS ?= numpy==2.4.6 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
                 typing-inspection==0.4.5 monai==1.6.1 safetensors==0.8.0 \
                 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.3 pygments==2.21.0 \
                 pytest-timeout==2.4.0
device-wheels:
	mkdir -p wheels/device
	$(PYTHON) -m pip download --dest wheels/device --only-binary=:all: --no-deps \
	  --python-version $(DEVICE_PY) --implementation cp --abi cp$(DEVICE_PY) \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  $(DEVICE_WHEELS)
	du -sh wheels/device

clean:
	rm -rf $(VENV) build *.egg-info
