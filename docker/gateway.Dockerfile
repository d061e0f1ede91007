# syntax=docker/dockerfile:1.7
# The REST gateway: FastAPI + the job API. No torch: it sends tasks to workers by name.
# PYTHON_IMAGE: any Debian-based image whose `python` is 3.11 with venv (docker/build-images.sh
# passes a local one where Docker Hub cannot be reached). PIP_FIND_LINKS: an optional folder of
# local wheels (mounted into the build) that pip searches besides the index.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG PIP_FIND_LINKS=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The dependencies first, in a layer of their own: only a change of pyproject.toml or of the pins
# rebuilds it (README.md is part of the package metadata; an empty one stands in here).
COPY docker/constraints.txt pyproject.toml ./
RUN touch README.md && pip install --constraint constraints.txt ".[service,workers]" && pip uninstall -y mcvae \
    && python -c "import importlib.util, sys; sys.exit('torch in the gateway image' if importlib.util.find_spec('torch') else 0)"
COPY README.md ./
COPY models ./models
COPY workers ./workers
COPY service ./service
COPY mcvae_cli ./mcvae_cli
RUN pip install --no-deps .

FROM ${PYTHON_IMAGE}
# /data/artifacts exists and belongs to the container user, so that a named volume mounted
# there starts out writable (Docker copies the image's ownership into a new volume).
RUN groupadd --gid 10001 mcvae && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin mcvae \
    && mkdir -p /data/artifacts && chown -R mcvae:mcvae /data
COPY --from=build /opt/venv /opt/venv
COPY --chmod=755 docker/entrypoint.sh /usr/local/bin/mcvae-entrypoint
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 MCVAE_DATA_DIR=/data MCVAE_ARTIFACT_ROOT=/data/artifacts
USER 10001:10001
WORKDIR /home/mcvae
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["mcvae-entrypoint"]
CMD ["mcvae", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-embedded-worker"]
