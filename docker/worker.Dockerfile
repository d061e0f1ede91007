# syntax=docker/dockerfile:1.7
# A CPU worker: the ML library (CPU torch) plus Celery. Consumes the cpu and gpu queues.
# PYTHON_IMAGE and PIP_FIND_LINKS as in gateway.Dockerfile. Where PyTorch's index cannot be
# reached, pass --build-arg TORCH_INDEX_URL= (empty) and a PIP_FIND_LINKS folder holding the CPU
# wheel of torch: the build stops if a CUDA build of torch got in instead.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG PIP_FIND_LINKS=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# CPU-only wheels of torch come from PyTorch's own index (PyPI's bundle CUDA: gigabytes).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN PIP_INDEX_URL="${TORCH_INDEX_URL:-https://pypi.org/simple}" pip install "torch==${TORCH_VERSION}" \
    && python -c "import sys, torch; sys.exit(f'a CUDA build of torch ({torch.__version__}) in the CPU image' if torch.version.cuda else 0)"
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
    MCVAE_DEVICE=cpu MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /home/mcvae
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
  CMD ["mcvae", "worker-ping"]
ENTRYPOINT ["mcvae-entrypoint"]
CMD ["mcvae", "worker", "--queues", "cpu,gpu", "--device", "cpu"]
