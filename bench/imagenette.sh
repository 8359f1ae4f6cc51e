#!/usr/bin/env bash
# The Imagenette measurements of docs/imagenette.md, one after the other, on the CPU:
# the teacher, then the student baseline and distilled over seeds 0-2. Each result is one JSON
# file under bench/imagenette-runs/ (the checkpoints stay under models/<that folder's name>/).
#   mkdir -p data && tar -xzf ../shared/data/imagenette2-224sq.tar.gz -C data
#   bash bench/imagenette.sh            # 96 px: about 90 minutes on 2 idle cores
#   bash bench/imagenette.sh studies/imagenette_128.yaml bench/imagenette-runs-128   # ~2.5 h
set -euo pipefail
cd "$(dirname "$0")/.."
KD=.venv/bin/kdsearch
SPEC=${1:-studies/imagenette.yaml}
OUT=${2:-bench/imagenette-runs}
TEACHER=$($KD validate "$SPEC" | .venv/bin/python -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["teacher"]["checkpoint"])')
MODELS=models/$(basename "$OUT")
mkdir -p "$OUT" "$MODELS"
stamp() { date -u +%FT%TZ; }

if [ ! -f "$TEACHER" ]; then
    echo "$(stamp) teacher"
    start=$(date +%s)
    $KD train-teacher "$SPEC"
    $KD evaluate "$TEACHER" --spec "$SPEC" --json > "$OUT/teacher.json"
    echo "{\"seconds\": $(( $(date +%s) - start ))}" > "$OUT/teacher-time.json"
fi
for seed in 0 1 2; do      # seed by seed, so that each finished pair can be compared
    for arm in baseline distilled; do
        result="$OUT/$arm-seed$seed.json"
        [ -f "$result" ] && continue
        echo "$(stamp) $arm seed $seed"
        alpha=(); [ "$arm" = baseline ] && alpha=(--set distill.alpha=0)
        start=$(date +%s)
        $KD train "$SPEC" "${alpha[@]}" --set train.seed=$seed \
            --out "$MODELS/$arm-seed$seed.pt" --json > "$result.part"
        python3 -c "import json,sys; d=json.load(open(sys.argv[1])); d['wall_seconds']=int(sys.argv[2]); print(json.dumps(d, indent=1))" \
            "$result.part" "$(( $(date +%s) - start ))" > "$result"
        rm "$result.part"
    done
done
echo "$(stamp) done"
