#!/usr/bin/env bash
# The GPU checks of issues 5 and 12 in one run, most important first; each step's results land
# in $OUT (default results/gpu) as soon as it ends, so a run cut short still reports. Needs the
# unpacked JPEG copy (or CIFAR_TAR, the shared archive) and the fine-tuned teacher (or TEACHER,
# a copy of it): docs/cifar10.md, section 1. Record what it prints in bench/RESULTS.md.
#   bench/gpu_check.sh                      # on a CUDA box with the project's packages
#   STEP_S=120 bench/gpu_check.sh           # each step cut off after 120 s
# DEVICE, SETS (overrides for every run), BENCH_ARGS and CELLS let it dry-run small on a CPU.
# On an H200 the three steps took about 2, 1.5 and 5 minutes (bench/RESULTS.md, "GPU").
set -u
OUT=${OUT:-results/gpu}
PY=${PYTHON:-python3}
STEP_S=${STEP_S:-240}
DEVICE=${DEVICE:-cuda}
SETS=${SETS:-distill.teacher_cache=all_views}
CELLS=${CELLS:-d0-base d0-kd d0-ks d05-base d05-kd d05-ks part-base part-kd}
RUNS=results/cifar10-runs-$DEVICE
mkdir -p "$OUT" models
exec > >(tee -a "$OUT/log.txt") 2>&1
step() { echo "== $(date -u +%H:%M:%S) $1"; }
sets=()
for s in $SETS; do sets+=(--set "$s"); done

step "the card"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
if [ ! -d data/cifar10-jpg/train ]; then
    mkdir -p data/cifar10-jpg && tar -xzf "${CIFAR_TAR:-../shared/data/cifar10-jpg.tar.gz}" -C data/cifar10-jpg
fi
[ -f models/resnet20-cifar10-jpg.pt ] || cp "${TEACHER:?the fine-tuned teacher is missing}" models/resnet20-cifar10-jpg.pt

step "issue 5: a 30-epoch cnn5 trial on 45,000 images, 1 worker against 4 on one device"
timeout "$STEP_S" $PY bench/workers.py studies/cifar10_jpg.yaml --device "$DEVICE" --workers 4 \
    --trials 1 "${sets[@]}" --dir "$OUT" --json > "$OUT/workers.json"
cat "$OUT/workers.json"

step "kdsearch bench: the reference-style loop against kdsearch's"
timeout "$STEP_S" $PY -m kdsearch bench --device "$DEVICE" ${BENCH_ARGS:-} --json > "$OUT/bench.json"
cat "$OUT/bench.json"

step "issue 12: the CNN and partial-label tables, seeds 0-2"
# shellcheck disable=SC2086
timeout "$STEP_S" $PY bench/cifar10_table.py run --jobs "${JOBS:-4}" --threads "${THREADS:-4}" --device "$DEVICE" \
    --cells $CELLS "${sets[@]}" --results "$RUNS"
$PY bench/cifar10_table.py table --results "$RUNS"
tar -cf "$OUT/cifar10-runs.tar" "$RUNS"

step "next: does torch.compile shorten a trial? (train_seconds against step 1's 53 s on an H200)"
timeout "$STEP_S" $PY -m kdsearch train studies/cifar10_jpg.yaml --device "$DEVICE" "${sets[@]}" \
    --set train.compile=true --out models/compiled.pt --json > "$OUT/compiled.json"
cat "$OUT/compiled.json"
step "done"
