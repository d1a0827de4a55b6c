#!/usr/bin/env bash
# Alternating speed comparison of imagen_jax against imagen-pytorch.
#
#   bash benchmarks/run_peer.sh [--reps 3] [--rounds 3] [--sample_rounds 1] ...
#
# Makes benchmarks/.venv-peer (torch 2.13.0 CPU + imagen-pytorch) on first use,
# checks that installing imagen-pytorch kept that torch, then runs
# benchmarks/compare.py (in the project's environment), which times our train
# step and imagen-pytorch's in turns and prints the table and the ratios.
# Arguments are passed to compare.py (see `compare.py --help`).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
VENV="$HERE/.venv-peer"
# Ours runs in the project's environment (launch/setup_env.sh makes .venv).
PY="${PYTHON:-$ROOT/.venv/bin/python}"
if [[ ! -x "$PY" ]]; then
  echo "error: $PY not found; run 'bash launch/test.sh' (or set PYTHON) first" >&2
  exit 1
fi
TORCH_VERSION="2.13.0"

has_peer() {
  "$VENV/bin/python" -c "from importlib.metadata import version; version('imagen-pytorch')" \
    >/dev/null 2>&1
}

if [[ ! -x "$VENV/bin/python" ]] || ! has_peer; then
  echo "creating $VENV (torch $TORCH_VERSION + imagen-pytorch)" >&2
  python3 -m venv "$VENV"
  # The pin stops imagen-pytorch's torchvision from pulling a newer torch.
  pin="$(mktemp)"
  echo "torch==$TORCH_VERSION" >"$pin"
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
  "$VENV/bin/pip" install -q -c "$pin" imagen-pytorch
  rm -f "$pin"
  # The registry's torchvision wheels are built against CUDA torch and fail to
  # load with the CPU one; imagen-pytorch only needs it for its dataset helpers
  # (peer_imagen_pytorch.py stands in an empty module), so it goes.
  "$VENV/bin/pip" uninstall -q -y torchvision
fi

installed="$("$VENV/bin/python" -c "import torch; print(torch.__version__)")"
if [[ "$installed" != "$TORCH_VERSION"* ]]; then
  echo "error: $VENV has torch $installed, expected $TORCH_VERSION" >&2
  exit 1
fi

cd "$ROOT"
exec "$PY" -m benchmarks.compare --peer_python "$VENV/bin/python" "$@"
