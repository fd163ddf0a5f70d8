#!/usr/bin/env bash
# Run a jaxgen job on every worker of a Cloud TPU pod slice (see launch/README.md).
# Usage: launch/tpu_pod.sh --tpu NAME --zone ZONE [options] -- jaxgen train sft --config ...
# Steps: (1) tar this repository's files (tracked + untracked, not ignored; working-tree state),
# (2) copy it to every worker, (3) unpack it into --repo there and create --venv if it is missing
# (jax[tpu] + requirements.txt + pip install -e), (4) run the job on all workers at once with
# JAXGEN_DISTRIBUTED=1, each worker's stdout+stderr also written to <repo>/<logdir>/worker-<N>.log,
# (5) with --fetch-logs, copy those logs back. --dry-run prints these commands and runs nothing.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/.." && pwd)

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh --tpu NAME --zone ZONE [options] -- JOB...
  --tpu NAME           TPU VM (pod slice) name (required)
  --zone ZONE          its zone (required)
  --project P          Google Cloud project (default: gcloud's configured project)
  --repo DIR           where the code goes on each worker (default ~/jaxgen)
  --venv DIR           virtual environment on each worker, created if missing (default ~/jaxgen-venv)
  --python PY          Python (>= 3.11, jax 0.10.2's floor) that creates the venv (default python3)
  --reinstall          pip install jax[tpu], requirements.txt and the repo into --venv again
  --no-sync            do not copy the code (use what is already in --repo)
  --logdir DIR         worker logs, relative to --repo unless absolute (default logs/<UTC time>)
  --fetch-logs LOCAL   afterwards copy every worker-<N>.log into the local directory LOCAL
  --env NAME=VALUE     export NAME=VALUE for the job (repeatable), e.g. --env LIBTPU_INIT_ARGS=...
  --dry-run            print every command (gcloud, tar) instead of running it
JOB is the command each worker runs, e.g. jaxgen train sft --config configs/sft.py:shapes; its
words reach the workers exactly as given here (spaces and quotes included).
EOF
}

tpu="" zone="" project="" repo="~/jaxgen" venv="~/jaxgen-venv" python=python3 reinstall=0 sync=1
logdir="logs/$(date -u +%Y%m%d-%H%M%S)" fetch="" dry_run=0 envs=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --tpu) tpu=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    --repo) repo=$2; shift 2 ;;
    --venv) venv=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --reinstall) reinstall=1; shift ;;
    --no-sync) sync=0; shift ;;
    --logdir) logdir=$2; shift 2 ;;
    --fetch-logs) fetch=$2; shift 2 ;;
    --env)
      if [[ ! $2 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then
        echo "tpu_pod.sh: --env takes NAME=VALUE, got $2" >&2; exit 2
      fi
      envs+=("$2"); shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option $1 (the job goes after --)" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -z $tpu || -z $zone || $# -eq 0 ]]; then usage >&2; exit 2; fi

# Remote words. rq: quote a path for the worker's bash, keeping a leading ~/ as $HOME.
rq() {
  case $1 in
    "~") printf '"$HOME"' ;;
    "~/"*) printf '"$HOME"/%q' "${1#\~/}" ;;
    *) printf '%q' "$1" ;;
  esac
}
# sq: single-quote a string for whatever login shell gcloud's ssh starts.
sq() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }
# Paths as scp sees them on a worker: relative to the home directory.
home_rel() { case $1 in "~/"*) printf '%s' "${1#\~/}" ;; *) printf '%s' "$1" ;; esac; }

remote() {  # $1: what the script is for, $2: the script; run it on every worker
  if [[ $dry_run == 1 ]]; then printf '# %s, on every worker: %s\n' "$1" "$2"; fi
  run gcloud compute tpus tpu-vm ssh "$tpu" --worker=all "${where[@]}" --command="bash -c $(sq "$2")"
}

run() {  # print the command (shell-quoted) under --dry-run, else run it
  if [[ $dry_run == 1 ]]; then
    printf '%q' "$1"; shift; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

where=(--zone="$zone")
if [[ -n $project ]]; then where+=(--project="$project"); fi
jax_version=$(sed -n 's/^jax==//p' "$src/requirements.txt")
tarball="${TMPDIR:-/tmp}/jaxgen-src-$$.tar.gz"
remote_tar="jaxgen-src.tar.gz"  # in the worker's home directory

if [[ $sync == 1 ]]; then
  # (1) the repository's files as they are in this working tree, not what was last committed.
  if [[ $dry_run == 1 ]]; then
    printf 'cd %q && git ls-files -z --cached --others --exclude-standard | ' "$src"
    printf 'tar --null --ignore-failed-read -T - -czf %q\n' "$tarball"
  else
    trap 'rm -f "$tarball"' EXIT
    (cd "$src" && git ls-files -z --cached --others --exclude-standard |
      tar --null --ignore-failed-read -T - -czf "$tarball")
  fi
  # (2) to every worker.
  run gcloud compute tpus tpu-vm scp "$tarball" "$tpu:$remote_tar" --worker=all "${where[@]}"
fi

# (3) unpack and make sure the environment exists.
R=$(rq "$repo") V=$(rq "$venv")
setup="set -euo pipefail"
if [[ $sync == 1 ]]; then
  setup+="; mkdir -p $R && tar -xzf \"\$HOME\"/$remote_tar -C $R && rm -f \"\$HOME\"/$remote_tar"
fi
P=$(printf %q "$python")
install="$P -c 'import sys; sys.exit(sys.version_info < (3, 11))'"
install+=" || { echo \"$P is older than Python 3.11: pass --python\" >&2; exit 1; }"
install+="; $P -m venv $V && $V/bin/pip install -q -U pip"
install+=" && $V/bin/pip install -q $(printf %q "jax[tpu]==$jax_version") -r $R/requirements.txt"
install+=" && $V/bin/pip install -q -e $R"
if [[ $reinstall == 1 ]]; then
  setup+="; $install"
else
  setup+="; if [ ! -x $V/bin/jaxgen ]; then $install; fi"
fi
remote "set-up" "$setup"

# (4) the job on all workers; worker N tees its output to <logdir>/worker-N.log.
worker_id='$(curl -sf -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)'
L=$(printf %q "$logdir")
job="set -o pipefail; cd $R && source $V/bin/activate && mkdir -p $L && id=$worker_id"
for kv in "${envs[@]}"; do
  job+=" && export ${kv%%=*}=$(printf %q "${kv#*=}")"
done
job+=" && JAXGEN_DISTRIBUTED=1$(printf ' %q' "$@") 2>&1 | tee $L/worker-\"\$id\".log"
status=0
remote "job" "$job" || status=$?

# (5) the logs, also when the job failed.
if [[ -n $fetch ]]; then
  case $logdir in
    /*) remote_logs=$logdir ;;
    *) remote_logs=$(home_rel "$repo")/$logdir ;;
  esac
  run mkdir -p "$fetch"
  run gcloud compute tpus tpu-vm scp "$tpu:$remote_logs/worker-*.log" "$fetch/" --worker=all \
    "${where[@]}" || true
fi
exit $status
