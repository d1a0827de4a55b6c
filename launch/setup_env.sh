#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project into it.
# Usage: source launch/setup_env.sh [requirements file]   (default requirements.txt)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQS="${1:-requirements.txt}"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "== creating $ROOT/.venv with $PY"
  "$PY" -m venv "$ROOT/.venv"
fi
echo "== installing $REQS into .venv (a few minutes the first time)"
"$ROOT/.venv/bin/pip" install -q --upgrade pip
"$ROOT/.venv/bin/pip" install -q -r "$ROOT/$REQS"
"$ROOT/.venv/bin/pip" install -q --no-deps -e "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL=3
cd "$ROOT"
