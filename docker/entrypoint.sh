#!/bin/sh
# Entry point of every mcvae image: before the command starts, check that the folders the
# container writes (MCVAE_DATA_DIR and MCVAE_ARTIFACT_ROOT) are writable by its user, and say
# what is wrong when they are not. The usual cause is a volume or host folder owned by root
# mounted over /data/artifacts: the image owns that folder as uid 10001, but a bind mount (or a
# volume made by an engine that does not copy the image's ownership) hides it.
set -eu
data_dir=${MCVAE_DATA_DIR:-/data}
for dir in "$data_dir" "${MCVAE_ARTIFACT_ROOT:-$data_dir/artifacts}"; do
  mkdir -p "$dir" 2>/dev/null || true
  probe="$dir/.mcvae-write-check.$$"
  if ! (: > "$probe") 2>/dev/null; then
    owner=$(stat -c 'owner uid %u, gid %g, mode %A' "$dir" 2>/dev/null || echo 'missing')
    echo "mcvae: cannot write to $dir ($owner) as uid $(id -u): the volume or folder mounted" \
      "there must be writable by uid $(id -u). Fix it on the host: chown -R $(id -u):$(id -g)" \
      "<folder>, or for a named volume: docker run --rm -v <volume>:/v debian chown -R" \
      "$(id -u):$(id -g) /v" >&2
    exit 78  # EX_CONFIG: a deployment problem, not a bug
  fi
  rm -f "$probe"
done
exec "$@"
