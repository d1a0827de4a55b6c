#!/usr/bin/env bash
# The main job on the embedded default world, from nothing: installs, builds
# ShapesWorld, trains the text-to-image demo, evaluates it on held-out prompts
# and samples a grid. About 30 minutes on 2 CPU cores.
# Environment: WORKDIR (runs/demo), DATA_DIR (data), MINUTES (training budget).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh" requirements.txt
WORKDIR="${WORKDIR:-runs/demo}"
DATA_DIR="${DATA_DIR:-data}"
MINUTES="${MINUTES:-23}"
CONFIG="experiments/t2i_shapes.py:minutes=$MINUTES"
START=$(date +%s)

echo "== building ShapesWorld in $DATA_DIR"
python -m launch.build_data --dataset shapes_world --data_dir "$DATA_DIR" \
  --variant simple --num_train 10000
echo "== training ($MINUTES min budget) into $WORKDIR"
python -m launch.train --config "$CONFIG" --workdir "$WORKDIR" \
  --config.data.data_dir="$DATA_DIR"
echo "== evaluating held-out single-object prompts"
python -m launch.eval --config "$CONFIG" --workdir "$WORKDIR" \
  --config.data.data_dir="$DATA_DIR"
echo "== sampling a request"
python -m launch.sample --workdir "$WORKDIR" \
  --instruction experiments/requests/t2i_example.json --out "$WORKDIR/sample.png"
echo "== done in $(( ($(date +%s) - START) / 60 )) min: figures in $WORKDIR/eval/results.md," \
  "grids $WORKDIR/eval/single_object.png and $WORKDIR/sample.png"
