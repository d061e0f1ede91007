# syntax=docker/dockerfile:1.7
# A GPU worker: PyTorch's CUDA runtime image plus the ML library and Celery. Consumes the gpu
# queue. torch comes with the base image; pyproject's range (torch>=2.5) accepts it as is.
ARG CUDA_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

FROM ${CUDA_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv --system-site-packages /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY docker/constraints.txt ./
COPY pyproject.toml README.md ./
COPY models ./models
COPY workers ./workers
COPY service ./service
COPY mcvae_cli ./mcvae_cli
RUN grep -v '^torch==' constraints.txt > constraints-cuda.txt \
    && pip install --constraint constraints-cuda.txt ".[ml,workers]"

FROM ${CUDA_IMAGE}
RUN groupadd --gid 10001 mcvae && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin mcvae \
    && mkdir -p /data && chown mcvae:mcvae /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 MCVAE_DATA_DIR=/data MCVAE_DEVICE=cuda \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /home/mcvae
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
  CMD ["mcvae", "worker-ping"]
CMD ["mcvae", "worker", "--queues", "gpu", "--device", "cuda"]
