# One entry point for every set-up step: `make test` and `make demo` work from a fresh clone.
# CI (.ci/run) runs `make test test-deploy`: the suite, then the container tests.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU machines take the local CPU build of torch; the CUDA image picks its own in docker/.
TORCH_PIN ?= torch==2.13.0

.PHONY: venv test test-fast test-deploy images demo bench clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install "$(TORCH_PIN)"
	$(PY) -m pip install -e ".[dev]" "$(TORCH_PIN)"
	touch $@

venv: $(VENV)/.installed

# Everything but the container builds (about 5-6 minutes on the 2-core CI machine).
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

clean:
	rm -rf $(VENV) build *.egg-info
