#!/usr/bin/env bash
# One JAX job over the GPUs of a SLURM allocation: one task per GPU.
#
#   bash launch/slurm.sh [--nodes N] [--gpus_per_node G] [--dry_run] \
#       -- python -m launch.train --config experiments/X.py --workdir W
#
# Run from the repository's root. Outside a job it submits itself
# (`sbatch --nodes=N --gpus-per-node=G`; defaults: the #SBATCH lines below);
# `sbatch [options] launch/slurm.sh -- CMD` does the same with any sbatch
# options. Inside the job, `srun` starts N*G tasks, G per node, each running
# CMD with `--distributed` appended: jax.distributed.initialize() reads the
# SLURM variables, task i of a node drives its GPU i, and task 0's node is the
# coordinator. Output lines are labelled with the task number; one failing
# task ends the job. W and the data must be on a filesystem every node sees.
# --dry_run prints the sbatch and srun commands instead of running them.
#
#SBATCH --job-name=imagen_jax
#SBATCH --nodes=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --output=imagen_jax-%j.out
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
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
run() {
  if [ "$DRY_RUN" = 1 ]; then join_quoted "$@"; echo; else "$@"; fi
}

NODES="" GPUS="" DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes|--gpus_per_node)
      [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 needs a positive integer"
      if [ "$1" = --nodes ]; then NODES="$2"; else GPUS="$2"; fi
      shift 2 ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (the command goes after --)" ;;
  esac
done
[ $# -gt 0 ] || die "no command: put it after --, e.g. -- python -m launch.train ..."

# The #SBATCH defaults, for a submission that does not name them.
default() { sed -n "s/^#SBATCH --$1=//p" "${BASH_SOURCE[0]}"; }

# The job's one step: NODES*GPUS tasks running the command.
job() {
  run srun "--nodes=$NODES" "--ntasks=$((NODES * GPUS))" "--ntasks-per-node=$GPUS" \
    --kill-on-bad-exit=1 --label "$@" --distributed
}

if [ -z "${SLURM_JOB_ID:-}" ]; then
  NODES="${NODES:-$(default nodes)}"
  GPUS="${GPUS:-$(default gpus-per-node)}"
  run sbatch "--nodes=$NODES" "--gpus-per-node=$GPUS" "$0" -- "$@"
  # The dry run also shows what the job will run.
  [ "$DRY_RUN" = 0 ] || job "$@"
  exit 0
fi

NODES="${NODES:-${SLURM_JOB_NUM_NODES:?not set: is this a SLURM job?}}"
# SLURM_GPUS_ON_NODE is a count; SLURM_GPUS_PER_NODE may be "type:count".
PER_NODE="${SLURM_GPUS_PER_NODE:-}"
GPUS="${GPUS:-${SLURM_GPUS_ON_NODE:-${PER_NODE##*:}}}"
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] \
  || die "no GPU count in this job (SLURM_GPUS_ON_NODE unset): pass --gpus_per_node"
# sbatch runs a copy of this script: the repository is where it was submitted.
[ "$DRY_RUN" = 1 ] || cd "${SLURM_SUBMIT_DIR:-.}"
[ ! -d .venv/bin ] || export PATH="$PWD/.venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL=3
job "$@"
