#!/usr/bin/env bash
# Images for a host that has a container engine but no registry (no Docker Hub), the way
# kdsearch's containers were built and run where it is developed (docs/containers.md):
#   1. a Debian 12 base with Python 3.11 and pip, made by debootstrap from Debian's mirror and
#      imported into the engine (it stands in for python:3.11-slim);
#   2. PostgreSQL 15 from Debian's packages on that base (it stands in for postgres:15).
# Then: KDSEARCH_BASE_IMAGE=localhost/kdsearch-base:bookworm \
#       KDSEARCH_POSTGRES_IMAGE=localhost/kdsearch-postgres:15 bash docker/check.sh
# Needs root (debootstrap), debootstrap and docker or podman on the host; installs nothing.
#   bash docker/local-images.sh [MIRROR]
set -euo pipefail
cd "$(dirname "$0")"
ENGINE=${KDSEARCH_ENGINE:-$(command -v docker >/dev/null && docker info >/dev/null 2>&1 && echo docker || echo podman)}
MIRROR=${1:-http://deb.debian.org/debian}
BASE=localhost/kdsearch-base:bookworm
ROOTFS=$(mktemp -d /var/tmp/kdsearch-base.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT

debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates,passwd \
    bookworm "$ROOTFS" "$MIRROR"
# The image's pip installs into the system Python, as in python:3.11-slim; Debian marks that
# Python as managed by apt (PEP 668) and pip would refuse.
rm -f "$ROOTFS"/usr/lib/python3.*/EXTERNALLY-MANAGED
# Behind a TLS-intercepting proxy, pip in the image must trust the proxy's CA like the host.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
    chroot "$ROOTFS" update-ca-certificates >/dev/null
fi
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin
tar -C "$ROOTFS" -c . | $ENGINE import --change 'CMD ["/bin/bash"]' - "$BASE"

# --network host: the build's apt-get reaches the mirror like the host does.
$ENGINE build --network host --build-arg "BASE=$BASE" -t localhost/kdsearch-postgres:15 postgres
echo "made $BASE and localhost/kdsearch-postgres:15 with $ENGINE"
