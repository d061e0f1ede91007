# syntax=docker/dockerfile:1.7
# A GPU worker: the ML library with a CUDA build of torch, plus Celery. Consumes the gpu queue.
# torch comes from PyPI on purpose: its Linux x86_64 wheels are CUDA builds that bring the CUDA
# runtime as pip packages (torch 2.13.0: CUDA 13.0, which needs an NVIDIA driver >= 580 on the
# host; the NVIDIA container toolkit passes the driver in). It is the version the tests pass with
# and docker/constraints.txt pins, so monai's and sympy's pins hold; tests/deploy checks that
# pip's resolver accepts these pins. A site on an older driver may pick another CUDA build:
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 (not reachable from the
# machines this project is tested on, so not tried here).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && python -c "import sys, torch; sys.exit(0 if torch.version.cuda else f'a CPU build of torch ({torch.__version__}) in the CUDA image')"
WORKDIR /src
# The dependencies first, in a layer of their own: only a change of pyproject.toml or of the pins
# rebuilds it (README.md is part of the package metadata; an empty one stands in here).
COPY docker/constraints.txt pyproject.toml ./
RUN touch README.md && pip install --constraint constraints.txt ".[ml,workers]" && pip uninstall -y mcvae
COPY README.md ./
COPY models ./models
COPY workers ./workers
COPY service ./service
COPY mcvae_cli ./mcvae_cli
RUN pip install --no-deps .

FROM ${PYTHON_IMAGE}
# /data/artifacts exists and belongs to the container user (see gateway.Dockerfile).
RUN groupadd --gid 10001 mcvae && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin mcvae \
    && mkdir -p /data/artifacts && chown -R mcvae:mcvae /data
COPY --from=build /opt/venv /opt/venv
COPY --chmod=755 docker/entrypoint.sh /usr/local/bin/mcvae-entrypoint
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 MCVAE_DATA_DIR=/data MCVAE_ARTIFACT_ROOT=/data/artifacts \
    MCVAE_DEVICE=cuda MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /home/mcvae
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
  CMD ["mcvae", "worker-ping"]
ENTRYPOINT ["mcvae-entrypoint"]
CMD ["mcvae", "worker", "--queues", "gpu", "--device", "cuda"]
