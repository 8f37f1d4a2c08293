#!/bin/sh
# deploy/build-image.sh [TAG]   build the gpt2-max image with buildah, no registry needed:
# the Debian base comes from debootstrap (Debian's own packages), imported once.
#   DEBIAN_MIRROR  mirror for debootstrap (default http://deb.debian.org/debian)
#   WHEELS         a wheelhouse directory to install from instead of the index
#   ISOLATION      buildah's --isolation (default chroot: runs where namespaces are missing)
set -eu
cd "$(dirname "$0")/.."
tag=${1:-localhost/gpt2-max:latest}
base=localhost/debian-bookworm:base
if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,curl \
        bookworm "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    tar -C "$root" -c . | podman import - "$base"
    rm -rf "$root"
fi
set -- --layers --format docker --isolation "${ISOLATION:-chroot}" --network host \
    --build-arg BASE="$base" -f deploy/Containerfile -t "$tag"
if [ -n "${WHEELS:-}" ]; then
    set -- "$@" -v "$(realpath "$WHEELS"):/wheels:ro" \
        --build-arg PIP_FIND_LINKS=/wheels --build-arg PIP_NO_INDEX=1
fi
exec buildah bud "$@" .
