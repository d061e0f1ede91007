#!/usr/bin/env bash
# Builds the mcvae images and prints each one's build time and size:
#   docker/build-images.sh [gateway] [worker] [worker-cuda]     (default: gateway worker)
# ENGINE (podman or docker; default: whichever is installed, podman first). Where Docker Hub
# and PyTorch's index cannot be reached (this project's machines), it builds FROM the local base
# image that shared/tools/container-engine.sh makes and takes torch's CPU wheel from the local
# wheel folder; elsewhere the Dockerfiles' defaults (official python image, PyTorch's CPU index).
#   PYTHON_IMAGE  base image (default: localhost/debian-python:3.11 when the engine has it)
#   WHEELS        folder of local wheels (default: pip's configured find-links, if any)
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=${ENGINE:-$(command -v podman || command -v docker || true)}
[[ -n $ENGINE ]] || { echo "build-images: neither podman nor docker is installed" >&2; exit 2; }
LOCAL_BASE=localhost/debian-python:3.11
if [[ -z ${PYTHON_IMAGE:-} ]] && "$ENGINE" image exists "$LOCAL_BASE" 2>/dev/null; then
  PYTHON_IMAGE=$LOCAL_BASE
fi
WHEELS=${WHEELS-$(python3 -m pip config get global.find-links 2>/dev/null || true)}
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(gateway worker)

args=()
if [[ -n ${PYTHON_IMAGE:-} ]]; then
  args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
fi
if [[ ${PYTHON_IMAGE:-} == "$LOCAL_BASE" ]]; then
  # Build steps share the host's network (no bridge here) and CA bundle (pip reaches PyPI).
  args+=(--network=host -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  if [[ -n $WHEELS && -d $WHEELS ]]; then
    args+=(-v "$WHEELS:$WHEELS:ro" --build-arg "PIP_FIND_LINKS=$WHEELS")
  fi
fi
# podman writes OCI images by default, which drop HEALTHCHECK; the docker format keeps it.
[[ $(basename "$ENGINE") == podman ]] && args+=(--format docker)

for target in "${targets[@]}"; do
  dockerfile=docker/$target.Dockerfile
  [[ -f $dockerfile ]] || { echo "build-images: no $dockerfile" >&2; exit 2; }
  extra=()
  # The CPU worker takes torch from the local wheels when PyTorch's index is out of reach.
  if [[ $target == worker && ${PYTHON_IMAGE:-} == "$LOCAL_BASE" && -n $WHEELS ]]; then
    extra+=(--build-arg TORCH_INDEX_URL=)
  fi
  start=$(date +%s)
  "$ENGINE" build "${args[@]}" "${extra[@]}" -f "$dockerfile" -t "mcvae-$target:latest" .
  size=$("$ENGINE" image inspect "mcvae-$target:latest" --format '{{.Size}}')
  echo "built mcvae-$target:latest in $(( $(date +%s) - start )) s, $(( size / 1000000 )) MB"
done
