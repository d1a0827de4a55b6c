#!/usr/bin/env bash
# Runs one command on every worker of a Cloud TPU VM slice: one JAX job.
#
#   bash launch/tpu_pod.sh --tpu NAME --zone ZONE [--project P] [--dir DIR] \
#       [--dry_run] -- python -m launch.train --config experiments/X.py --workdir W
#
# Each worker runs the same command (`gcloud compute tpus tpu-vm ssh
# --worker=all`) in DIR (default ~/imagen_jax, the copy of this repository on
# the workers, see README "Running on a pod") with its .venv first on PATH and
# `--distributed` appended: jax.distributed.initialize() finds the other
# workers from the TPU VM's metadata. W and the data must be paths every worker
# sees. --dry_run prints the gcloud command instead of running it.
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "error: $1" >&2; exit 2; }

# An argument as a shell reads it back: unchanged when plain, else in '...'.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./=:@%+,~-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
join_quoted() {
  local out="" arg
  for arg in "$@"; do out+="${out:+ }$(quote "$arg")"; done
  printf '%s' "$out"
}

TPU="" ZONE="" PROJECT="" DIR="~/imagen_jax" DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tpu|--zone|--project|--dir)
      [ $# -ge 2 ] || die "$1 needs a value"
      case "$1" in
        --tpu) TPU="$2" ;; --zone) ZONE="$2" ;;
        --project) PROJECT="$2" ;; --dir) DIR="$2" ;;
      esac
      shift 2 ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (the command goes after --)" ;;
  esac
done
[ -n "$TPU" ] || die "--tpu NAME is required (the TPU VM's name)"
[ -n "$ZONE" ] || die "--zone ZONE is required (e.g. us-central2-b)"
[ $# -gt 0 ] || die "no command: put it after --, e.g. -- python -m launch.train ..."

# DIR is left unquoted so that the worker's shell expands its ~.
REMOTE="cd $DIR && export PATH=\"\$PWD/.venv/bin:\$PATH\" TF_CPP_MIN_LOG_LEVEL=3"
REMOTE+=" && $(join_quoted "$@" --distributed)"
CMD=(gcloud compute tpus tpu-vm ssh "$TPU" "--zone=$ZONE")
[ -z "$PROJECT" ] || CMD+=("--project=$PROJECT")
CMD+=(--worker=all "--command=$REMOTE")

if [ "$DRY_RUN" = 1 ]; then
  join_quoted "${CMD[@]}"
  echo
else
  exec "${CMD[@]}"
fi
