#!/usr/bin/env bash
# Build and run kdsearch's containers for real, then take everything down again:
# the worker image, PostgreSQL, the dashboard and two CPU worker containers run a small digits
# study (studies/digits_container_check.yaml) to its budget, and the host's kdsearch reads
# `status --json` and `export-table` from that database. Works with docker or podman.
#   bash docker/check.sh [OUT]      # OUT: a folder for check.json, the table and the logs
# Images (defaults: Docker Hub's); on a host without a registry, make local ones first with
# docker/local-images.sh and name them (docs/containers.md):
#   KDSEARCH_BASE_IMAGE=localhost/kdsearch-base:bookworm \
#   KDSEARCH_POSTGRES_IMAGE=localhost/kdsearch-postgres:15 bash docker/check.sh
# The plain engine CLI, not compose: podman-compose ignores depends_on conditions and profiles.
# What it needs (the host's kdsearch, an engine that answers, python3, curl, the two images) is
# checked first: a missing one stops it at once, exit code 2, with one line saying how to get it.
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=${KDSEARCH_ENGINE:-}      # default: docker if it answers, else podman
BASE=${KDSEARCH_BASE_IMAGE:-python:3.11-slim}
PG_IMAGE=${KDSEARCH_POSTGRES_IMAGE:-postgres:15}
IMAGE=kdsearch-worker:check
KD=${KDSEARCH:-.venv/bin/kdsearch}      # the host's kdsearch, for status and export-table

# Before anything is built or started (see the header).
refuse() { echo "docker/check.sh: $*" >&2; exit 2; }
command -v "$KD" >/dev/null || refuse "the host's kdsearch ($KD) is missing, and the check reads the study with it: run make venv, or set KDSEARCH to a kdsearch command"
if [ -z "$ENGINE" ]; then
    for engine in docker podman; do
        command -v "$engine" >/dev/null && "$engine" info >/dev/null 2>&1 && ENGINE=$engine && break
    done
    [ -n "$ENGINE" ] || refuse "no container engine answers (docker info and podman info fail or are missing): start docker, or set up podman as docs/containers.md says"
else
    command -v "$ENGINE" >/dev/null || refuse "KDSEARCH_ENGINE=$ENGINE is not on PATH: install it, or unset KDSEARCH_ENGINE to use docker or podman"
    $ENGINE info >/dev/null 2>&1 || refuse "$ENGINE does not answer ($ENGINE info fails): start it (docs/containers.md)"
fi
for tool in python3 curl; do
    command -v "$tool" >/dev/null || refuse "$tool is not on PATH: apt-get install -y $tool"
done
for image in "$BASE" "$PG_IMAGE"; do
    $ENGINE image inspect "$image" >/dev/null 2>&1 || $ENGINE pull -q "$image" >/dev/null 2>&1 \
        || refuse "image $image is neither on this machine nor pullable: bash docker/local-images.sh makes local ones, named by KDSEARCH_BASE_IMAGE and KDSEARCH_POSTGRES_IMAGE (docs/containers.md)"
done
PG_PORT=${KDSEARCH_CHECK_PG_PORT:-55432}
DASH_PORT=${KDSEARCH_CHECK_DASHBOARD_PORT:-58080}
SPEC=studies/digits_container_check.yaml
STUDY=digits_container_check
OUT=${1:-$(mktemp -d)}
P=kdsearch-check-$$      # prefix of every container and of the network: one per run
mkdir -p "$OUT"
MODELS=$(mktemp -d)       # the containers' /app/models: the teacher and the trials' checkpoints
# A fresh password, never printed: containers get it through the environment, not argv.
POSTGRES_PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
export POSTGRES_PASSWORD
export KDSEARCH_STORAGE="postgresql://kdsearch:$POSTGRES_PASSWORD@$P-postgres:5432/kdsearch"
stamp() { date -u +%FT%TZ; }
now() { date +%s; }

teardown() {
    for c in worker-1 worker-2 dashboard postgres; do
        $ENGINE logs "$P-$c" > "$OUT/$c.log" 2>&1 || true
        $ENGINE rm -f -v "$P-$c" >/dev/null 2>&1 || true
    done
    $ENGINE network rm "$P" >/dev/null 2>&1 || true
    rm -rf "$MODELS"
}
trap teardown EXIT
trap 'exit 130' INT TERM    # a stopped check still takes its containers down

echo "$(stamp) building $IMAGE on $BASE with $ENGINE"
t=$(now)
$ENGINE build -f docker/Dockerfile --build-arg "BASE=$BASE" \
    --build-arg "UID=$(id -u)" --build-arg "GID=$(id -g)" -t "$IMAGE" . > "$OUT/build.log" 2>&1 \
    || { tail -20 "$OUT/build.log"; exit 1; }
build_s=$(( $(now) - t ))
image_bytes=$($ENGINE image inspect --format '{{.Size}}' "$IMAGE")

echo "$(stamp) PostgreSQL ($PG_IMAGE), on 127.0.0.1:$PG_PORT for the host"
$ENGINE network create "$P" >/dev/null
$ENGINE run -d --name "$P-postgres" --network "$P" -p "127.0.0.1:$PG_PORT:5432" \
    -e POSTGRES_USER=kdsearch -e POSTGRES_PASSWORD -e POSTGRES_DB=kdsearch "$PG_IMAGE" >/dev/null
for _ in $(seq 60); do
    $ENGINE exec "$P-postgres" pg_isready -h 127.0.0.1 -U kdsearch -d kdsearch -q && break
    sleep 1
done

run() {  # a one-shot kdsearch command in the image, on the study's network
    $ENGINE run --rm --network "$P" -e KDSEARCH_STORAGE -v "$MODELS:/app/models" "$IMAGE" "$@"
}
t=$(now)
echo "$(stamp) teacher and study"
for step in train-teacher create-study; do
    run "$step" "$SPEC" > "$OUT/$step.log" 2>&1 || { tail -5 "$OUT/$step.log"; exit 1; }
done
setup_s=$(( $(now) - t ))

echo "$(stamp) dashboard on 127.0.0.1:$DASH_PORT, two CPU workers"
$ENGINE run -d --name "$P-dashboard" --network "$P" -e KDSEARCH_STORAGE \
    -v "$MODELS:/app/models" -p "127.0.0.1:$DASH_PORT:8080" \
    "$IMAGE" dashboard --host 0.0.0.0 --port 8080 >/dev/null
t=$(now)
# Two containers share the host's cores: each gets half, or both would run every core's worth
# of threads and slow each other many times over.
threads=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))
for i in 1 2; do
    $ENGINE run -d --name "$P-worker-$i" --network "$P" -e KDSEARCH_STORAGE \
        -e "KDSEARCH_THREADS=$threads" -v "$MODELS:/app/models" "$IMAGE" \
        worker --study "$STUDY" --devices cpu >/dev/null
done
codes=$($ENGINE wait "$P-worker-1" "$P-worker-2" | tr '\n' ' ')
search_s=$(( $(now) - t ))
dashboard_http=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$DASH_PORT/dashboard" || true)

echo "$(stamp) the host reads the study (workers exited: $codes)"
export KDSEARCH_STORAGE="postgresql://kdsearch:$POSTGRES_PASSWORD@127.0.0.1:$PG_PORT/kdsearch"
$KD status --study "$STUDY" --json > "$OUT/status.json"
$KD export-table --study "$STUDY" -o "$OUT/results.csv"
for c in worker-1 worker-2 dashboard postgres; do $ENGINE logs "$P-$c" > "$OUT/$c.log" 2>&1; done
leaks=$({ grep -l -r -F "$POSTGRES_PASSWORD" "$OUT" || true; } | wc -l)  # files that hold it

python3 - "$OUT" "$ENGINE" "$BASE" "$PG_IMAGE" "$build_s" "$image_bytes" "$setup_s" \
    "$search_s" "$codes" "$dashboard_http" "$leaks" <<'PY'
import json, sys
from pathlib import Path
out, engine, base, pg, build_s, size, setup_s, search_s, codes, http, leaks = sys.argv[1:]
status = json.loads(Path(out, "status.json").read_text())
result = {
    "engine": engine, "base_image": base, "postgres_image": pg,
    "build_seconds": int(build_s), "image_bytes": int(size),
    "teacher_and_create_study_seconds": int(setup_s), "search_seconds": int(search_s),
    "worker_exit_codes": [int(c) for c in codes.split()], "dashboard_http": http,
    "files_holding_the_password": int(leaks), "status": status,
    "table_rows": sum(1 for _ in open(Path(out, "results.csv"))) - 1,
}
Path(out, "check.json").write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps({k: v for k, v in result.items() if k != "status"}))
ok = (result["worker_exit_codes"] == [0, 0] and http == "200" and int(leaks) == 0
      and result["table_rows"] > 0)
sys.exit(0 if ok else 1)
PY
