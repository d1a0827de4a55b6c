#!/usr/bin/env bash
# The mechanism probes of issue 13 on the CPU world: each conditioning path
# trained alone from the world's text-to-image model, then scored (with the
# text-only baseline it must beat):
#   subject           the context path: the text names only [ref#1], so the
#                     identity (shape, colour, fill) comes from the references;
#   style_generation  style (background pattern and palette) from a context image;
#   segmentation      the channel-concatenated input image.
# Environment: RUNS (runs), START (the text-to-image run, $RUNS/cpu_t2i, trained
# by launch/instruct.sh's first step when missing), MINUTES per probe (default
# subject 30, style_generation 15, segmentation 20: the runs of
# docs/results.md), PROBES (the three above).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh" requirements.txt
RUNS="${RUNS:-runs}"
START="${START:-$RUNS/cpu_t2i}"
declare -A DEFAULT_MINUTES=([subject]=30 [style_generation]=15 [segmentation]=20)
PROBES="${PROBES:-subject style_generation segmentation}"

if [ ! -d "$START/checkpoints" ]; then
  echo "== text-to-image on the CPU world (55 min) into $START"
  python -m launch.train --config "experiments/stage2_shapes.py:simple,t2i,minutes=55" \
    --workdir "$START"
fi
for task in $PROBES; do
  m="${MINUTES:-${DEFAULT_MINUTES[$task]:-20}}"
  echo "== probe $task ($m min) into $RUNS/probe_$task"
  python -m launch.train --config "experiments/stage2_shapes.py:simple,task=$task,minutes=$m" \
    --workdir "$RUNS/probe_$task" --config.init_from="$START"
  python -m launch.eval --config "experiments/stage2_shapes.py:simple,task=$task" \
    --workdir "$RUNS/probe_$task"
done
