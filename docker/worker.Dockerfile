# syntax=docker/dockerfile:1.7
# A CPU worker: the ML library (CPU torch) plus Celery. Consumes the cpu and gpu queues.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# CPU-only wheels of torch come from PyTorch's own index (the default one bundles CUDA).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY docker/constraints.txt ./
COPY pyproject.toml README.md ./
COPY models ./models
COPY workers ./workers
COPY service ./service
COPY mcvae_cli ./mcvae_cli
RUN pip install --constraint constraints.txt ".[ml,workers]"

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 mcvae && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin mcvae \
    && mkdir -p /data && chown mcvae:mcvae /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 MCVAE_DATA_DIR=/data MCVAE_DEVICE=cpu \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /home/mcvae
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
  CMD ["mcvae", "worker-ping"]
CMD ["mcvae", "worker", "--queues", "cpu,gpu", "--device", "cpu"]
