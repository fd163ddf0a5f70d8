#!/usr/bin/env bash
# Submit launch/gpu_slurm.sbatch: a jaxgen job on every GPU of N nodes (see launch/README.md).
# Usage: launch/gpu_slurm.sh --nodes 2 [options] -- jaxgen train sft --config configs/sft.py:shapes
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
  cat <<'EOF'
usage: launch/gpu_slurm.sh --nodes N [options] -- JOB...
  --nodes N            nodes to allocate (required)
  --gpus-per-node G    GPUs per node (default 8)
  --per-gpu            one task per GPU (G tasks per node) instead of one task per node
  --venv DIR           virtual environment to activate (on a filesystem every node sees)
  --logdir DIR         per-task logs and the batch log (default logs)
  --partition P, --account A, --time T, --job-name NAME   passed to sbatch
  --dry-run            print the sbatch command and the srun line the job would run; run nothing
JOB is the command every task runs, e.g. jaxgen train sft --config configs/sft.py:shapes
EOF
}

nodes="" gpus=8 per_gpu=0 venv="" logdir=logs dry_run=0 extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --nodes) nodes=$2; shift 2 ;;
    --gpus-per-node) gpus=$2; shift 2 ;;
    --per-gpu) per_gpu=1; shift ;;
    --venv) venv=$2; shift 2 ;;
    --logdir) logdir=$2; shift 2 ;;
    --partition|--account|--time|--job-name) extra+=("$1=$2"); shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "gpu_slurm.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -z $nodes || $# -eq 0 ]]; then usage >&2; exit 2; fi
tasks=1
if [[ $per_gpu == 1 ]]; then tasks=$gpus; fi

sbatch_cmd=(sbatch --nodes="$nodes" --ntasks-per-node="$tasks" --gpus-per-node="$gpus"
            --output="$logdir/%j-batch.log" "${extra[@]}" "$here/gpu_slurm.sbatch" "$@")
export JAXGEN_LOGDIR=$logdir
if [[ -n $venv ]]; then export JAXGEN_VENV=$venv; fi

if [[ $dry_run == 1 ]]; then
  printf 'mkdir -p %q\n' "$logdir"
  printf 'JAXGEN_LOGDIR=%q' "$logdir"
  if [[ -n $venv ]]; then printf ' JAXGEN_VENV=%q' "$venv"; fi
  printf ' %q' "${sbatch_cmd[@]}"; printf '\n'
  echo "# the batch script then runs:"
  DRY_RUN=1 SLURM_NTASKS_PER_NODE=$tasks SLURM_GPUS_PER_NODE=$gpus SLURM_JOB_NUM_NODES=$nodes \
    bash "$here/gpu_slurm.sbatch" "$@"
  exit 0
fi
mkdir -p "$logdir"
"${sbatch_cmd[@]}"
