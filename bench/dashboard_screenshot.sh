#!/usr/bin/env bash
# Screenshots of optuna-dashboard on a study, taken in headless Chromium, to check by eye what
# a user sees: the metric's name on the axes, the spec as a readable note, the teacher's
# attributes, and (with search.artifact_store) the report's figures as artifacts.
#
# usage: bench/dashboard_screenshot.sh STORAGE_URL STUDY [OUT_DIR]   (default: docs/screenshots)
# needs: chromium (Debian: apt-get install chromium) and the kdsearch venv on PATH. With an
# artifact store given as a relative path, run it from the folder the study was created in.
# Writes OUT_DIR/dashboard-{overview,analytics,trials,note}.png. Not part of the test suite:
# it takes about a minute and needs a browser.
set -euo pipefail

storage=${1:?usage: $0 STORAGE_URL STUDY [OUT_DIR]}
study=${2:?usage: $0 STORAGE_URL STUDY [OUT_DIR]}
out=${3:-docs/screenshots}
browser=$(command -v chromium || command -v chromium-browser || true)
if [[ -z $browser ]]; then
    echo "$0: needs chromium (apt-get install chromium)" >&2
    exit 2
fi
mkdir -p "$out"

port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python -m kdsearch dashboard --storage "$storage" --port "$port" >"$out/dashboard.log" 2>&1 &
server=$!
trap 'kill $server' EXIT
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/api/studies" >/dev/null && break
    sleep 0.2
done
head -1 "$out/dashboard.log"

# The dashboard's URLs use Optuna's study id, not the name.
id=$(python -c 'import optuna, sys
print(optuna.load_study(study_name=sys.argv[2], storage=sys.argv[1])._study_id)' "$storage" "$study")
base="http://127.0.0.1:$port/dashboard/studies/$id"
for page in overview analytics trials note; do
    path=$([[ $page == overview ]] && echo "" || echo "/$page")
    # The overview is tall: its user attributes and the study's artifacts are at the bottom.
    height=$([[ $page == overview ]] && echo 4400 || echo 1600)
    # The dashboard is a JavaScript app: give it virtual time to fetch the study and draw.
    "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --window-size=1400,"$height" --virtual-time-budget=15000 \
        --screenshot="$out/dashboard-$page.png" "$base$path" 2>/dev/null
    echo "wrote $out/dashboard-$page.png ($base$path)"
done
