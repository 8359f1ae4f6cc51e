#!/usr/bin/env bash
# Gain against schedule length (docs/imagenette.md, section 7), on the CPU: a 30-epoch
# teacher, then for each seed the baseline and distilled MobileNetV3-small at 10, 20 and 40
# epochs. Each result is one JSON file under bench/imagenette-schedule/ (checkpoints under
# models/imagenette-schedule/); a finished run is skipped and an interrupted teacher resumes,
# so the same command carries on where it stopped.
#   mkdir -p data && tar -xzf ../shared/data/imagenette2-224sq.tar.gz -C data
#   bash bench/imagenette_schedule.sh [SEEDS...]      # default seeds 0 1 2
set -euo pipefail
cd "$(dirname "$0")/.."
KD=.venv/bin/kdsearch
SPEC=studies/imagenette_schedule.yaml
OUT=bench/imagenette-schedule
MODELS=models/imagenette-schedule
TEACHER=$MODELS/resnet18-30ep.pt
SEEDS=("${@:-0 1 2}")
mkdir -p "$OUT" "$MODELS"
stamp() { date -u +%FT%TZ; }
timed() {  # timed RESULT COMMAND...: the command's JSON plus its wall time, written at the end
    local result=$1 start; shift
    start=$(date +%s)
    "$@" > "$result.part"
    .venv/bin/python -c "import json,sys; d=json.load(open(sys.argv[1])); d['wall_seconds']=int(sys.argv[2]); print(json.dumps(d, indent=1))" \
        "$result.part" "$(( $(date +%s) - start ))" > "$result"
    rm "$result.part"
}

if [ ! -f "$OUT/teacher.json" ]; then
    echo "$(stamp) teacher"
    start=$(date +%s)
    [ -f "$TEACHER" ] || $KD train-teacher "$SPEC"
    echo "{\"seconds\": $(( $(date +%s) - start ))}" > "$OUT/teacher-time.json"
    $KD evaluate "$TEACHER" --spec "$SPEC" --json > "$OUT/teacher.json"
fi
for seed in ${SEEDS[*]}; do
    for epochs in 10 20 40; do
        for arm in baseline distilled; do
            result="$OUT/$arm-${epochs}ep-seed$seed.json"
            [ -f "$result" ] && continue
            echo "$(stamp) $arm $epochs epochs seed $seed"
            alpha=(); [ "$arm" = baseline ] && alpha=(--set distill.alpha=0)
            timed "$result" $KD train "$SPEC" "${alpha[@]}" --set train.seed="$seed" \
                --set train.epochs="$epochs" --out "$MODELS/$arm-${epochs}ep-seed$seed.pt" --json
        done
    done
done
echo "$(stamp) done"
