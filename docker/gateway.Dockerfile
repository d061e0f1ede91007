# syntax=docker/dockerfile:1.7
# The REST gateway: FastAPI + the job API. No torch: it sends tasks to workers by name.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY docker/constraints.txt ./
COPY pyproject.toml README.md ./
COPY models ./models
COPY workers ./workers
COPY service ./service
COPY mcvae_cli ./mcvae_cli
RUN pip install --constraint constraints.txt ".[service,workers]"

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 mcvae && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin mcvae \
    && mkdir -p /data && chown mcvae:mcvae /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 MCVAE_DATA_DIR=/data
USER 10001:10001
WORKDIR /home/mcvae
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["mcvae", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-embedded-worker"]
