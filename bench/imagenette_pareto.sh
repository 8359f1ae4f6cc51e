#!/usr/bin/env bash
# The two-objective search of docs/imagenette.md, section 3, with its results kept: the
# 14-epoch teacher of studies/imagenette.yaml (skipped if trained), then the study (accuracy
# and parameters over three library students) run for at most TIMEOUT seconds, exported to
# bench/imagenette-pareto/ (every trial as CSV and JSON, the Pareto front as Markdown, the
# status) with the front's figure.
#   mkdir -p data && tar -xzf ../shared/data/imagenette2-224sq.tar.gz -C data
#   bash bench/imagenette_pareto.sh [TIMEOUT]     # default 2400 s of search
set -euo pipefail
cd "$(dirname "$0")/.."
KD=.venv/bin/kdsearch
SPEC=studies/imagenette.yaml
OUT=bench/imagenette-pareto
DB=sqlite:///$OUT/search.db
mkdir -p "$OUT"
stamp() { date -u +%FT%TZ; }
[ -f models/imagenette-resnet18.pt ] || { echo "$(stamp) teacher"; $KD train-teacher "$SPEC"; }
$KD evaluate models/imagenette-resnet18.pt --spec "$SPEC" --json > "$OUT/teacher.json"
echo "$(stamp) search"
$KD create-study "$SPEC" --storage "$DB" --load-if-exists
$KD worker --study imagenette --storage "$DB" --devices cpu --timeout "${1:-2400}" || true
echo "$(stamp) export"
$KD export-table --study imagenette --storage "$DB" --by trial -o "$OUT/trials.csv"
$KD export-table --study imagenette --storage "$DB" --by trial -o "$OUT/trials.json"
$KD export-table --study imagenette --storage "$DB" --pareto --format markdown > "$OUT/pareto.md"
$KD status --study imagenette --storage "$DB" --json > "$OUT/status.json"
$KD report --study imagenette --storage "$DB" --no-baseline -o "$OUT/report"
echo "$(stamp) done"
