#!/usr/bin/env bash
# The serving page driven in a real browser: installs Debian's Chromium if it
# is missing, starts launch.serve on a run, opens the page with its form given
# in the query string (?text=...&autorun=1: the page fills the form and
# presses Generate itself) in headless Chromium, and saves a screenshot taken
# once the page is idle, the generated grid in it (virtual time does not
# advance while the request is pending).
# Usage: launch/screenshot.sh [WORKDIR] [OUT.png]
# Environment: PORT (8765), PYTHON (.venv/bin/python), TEXT, STEPS, IMAGES and,
# for an instruction model, REFS: reference images as "PNG=text" separated by
# ";" (the k-th is [ref#k]).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
WORKDIR="${1:-runs/cpu_t2i}"
OUT="${2:-docs/results/2026-11-30_serve_page.png}"
PORT="${PORT:-8765}"
PYTHON="${PYTHON:-.venv/bin/python}"
TEXT="${TEXT:-a large red circle at the center}"
STEPS="${STEPS:-20}"
IMAGES="${IMAGES:-8}"

if ! command -v chromium >/dev/null; then
  echo "== installing chromium (apt-get)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends chromium
fi

echo "== serving $WORKDIR on port $PORT"
"$PYTHON" -m launch.serve --workdir "$WORKDIR" --port "$PORT" --max_batch "$IMAGES" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
  kill -0 "$SERVER"  # the server died: stop here
  sleep 2
done

QUERY=$("$PYTHON" - "$TEXT" "$STEPS" "$IMAGES" "${REFS:-}" <<'EOF'
import base64, sys, urllib.parse
text, steps, images, refs = sys.argv[1:]
query = dict(text=text, steps=steps, num_images=images, seed=0, autorun=1)
for k, ref in enumerate(filter(None, refs.split(";")), 1):
    path, _, ref_text = ref.partition("=")
    with open(path, "rb") as f:
        query[f"ref{k}"] = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    query[f"ref{k}_text"] = ref_text
print(urllib.parse.urlencode(query))
EOF
)
mkdir -p "$(dirname "$OUT")"
echo "== screenshot of /?${QUERY:0:200}"
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --window-size=1280,860 --virtual-time-budget=120000 \
  --screenshot="$OUT" "http://127.0.0.1:$PORT/?$QUERY" 2>/dev/null
echo "== wrote $OUT"
