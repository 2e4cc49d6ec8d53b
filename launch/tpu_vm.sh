#!/usr/bin/env bash
# BigBiGAN on a Cloud TPU VM pod slice: create it, install this repo on every worker, train, follow
# the log, stop, delete.
#
#   launch/tpu_vm.sh [FLAGS] COMMAND [ARGS...]
#
# Commands:
#   create        Create the TPU VM (all workers of the slice).
#   setup         On every worker: copy this working tree (or clone --repo_url) to --remote_dir,
#                 make a Python >= 3.11 venv at --venv with uv, pip install -e the repo and jax[tpu].
#   run ARGS...   On every worker, detached: python -m bigbigan_jax.main ARGS --distributed, logging
#                 to REMOTE_DIR/train.log. ARGS must hold --config and --workdir, and the workdir
#                 must be a gs:// bucket (or a disk all workers share): every process writes there.
#                 Running the same command again resumes from the newest checkpoint.
#   logs [W]      Follow the training log of worker W (default 0).
#   stop          SIGTERM the run on every worker (it saves a checkpoint, then exits).
#   ssh [CMD]     Run CMD on every worker, or open a shell on worker 0.
#   status        Describe the TPU VM.
#   delete        Delete the TPU VM.
#
# Flags (or environment variables):
#   --name=N               TPU_NAME          (bigbigan)
#   --zone=Z               ZONE              (us-central2-b)
#   --project=P            PROJECT           (gcloud's default project)
#   --accelerator_type=T   ACCELERATOR_TYPE  (v4-32: 16 chips on 4 workers)
#   --version=V            RUNTIME_VERSION   (tpu-ubuntu2204-base; v5e: v2-alpha-tpuv5-lite,
#                                             v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e)
#   --spot                 SPOT=1            (create a Spot TPU)
#   --remote_dir=D         REMOTE_DIR        (~/bigbigan_jax on every worker)
#   --venv=D               VENV              (~/bigbigan_venv on every worker)
#   --python_version=X     PYTHON_VERSION    (3.12)
#   --repo_url=URL         REPO_URL          (empty: copy this working tree instead of cloning)
#   --dry_run              DRY_RUN=1         (print the gcloud commands instead of running them)
#
# Example (a v4-32 slice, then Table 1 one run at a time with launch/sweep.py):
#   export TPU_NAME=bbg ZONE=us-central2-b ACCELERATOR_TYPE=v4-32
#   launch/tpu_vm.sh create && launch/tpu_vm.sh setup
#   launch/tpu_vm.sh run --config=configs/base.py:variant=base --workdir=gs://BUCKET/bigbigan/base
#   launch/tpu_vm.sh logs
#   python launch/sweep.py --sweep=configs/sweeps/table1.py --executor=tpu_vm \
#       --workroot=gs://BUCKET/bigbigan --tpu_name=$TPU_NAME --zone=$ZONE
#   launch/tpu_vm.sh delete

set -euo pipefail

TPU_NAME="${TPU_NAME:-bigbigan}"
ZONE="${ZONE:-us-central2-b}"
PROJECT="${PROJECT:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
SPOT="${SPOT:-0}"
REMOTE_DIR="${REMOTE_DIR:-~/bigbigan_jax}"   # expanded by the workers' shell, not here
VENV="${VENV:-~/bigbigan_venv}"
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
REPO_URL="${REPO_URL:-}"
DRY_RUN="${DRY_RUN:-0}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) TPU_NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --accelerator_type=*) ACCELERATOR_TYPE="${1#*=}" ;;
    --version=*) RUNTIME_VERSION="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --remote_dir=*) REMOTE_DIR="${1#*=}" ;;
    --venv=*) VENV="${1#*=}" ;;
    --python_version=*) PYTHON_VERSION="${1#*=}" ;;
    --repo_url=*) REPO_URL="${1#*=}" ;;
    --dry_run) DRY_RUN=1 ;;
    -h|--help|help) usage; exit 0 ;;
    --*) die "unknown flag $1 (see --help)" ;;
    *) break ;;
  esac
  shift
done
[[ $# -gt 0 ]] || { usage; exit 2; }
COMMAND="$1"
shift

GCLOUD_ARGS=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && GCLOUD_ARGS+=(--project="$PROJECT")

# Runs a command, or prints it with --dry_run.
x() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

# Runs a shell line on every worker of the slice.
on_all_workers() {
  x gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_ARGS[@]}" --worker=all --command="$1"
}

create() {
  local extra=()
  [[ "$SPOT" == 1 ]] && extra+=(--spot)
  x gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_ARGS[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" ${extra[@]+"${extra[@]}"}
}

setup() {
  local fetch
  if [[ -n "$REPO_URL" ]]; then
    fetch="if [ -d $REMOTE_DIR/.git ]; then git -C $REMOTE_DIR pull --ff-only; \
else git clone $(printf '%q' "$REPO_URL") $REMOTE_DIR; fi"
  else
    # The working tree as git sees it (tracked + untracked, not ignored): no runs/, no venvs.
    local tarball
    tarball="$(mktemp "${TMPDIR:-/tmp}/bigbigan_src.XXXXXX")"
    if [[ "$DRY_RUN" != 1 ]]; then
      if git -C "$REPO_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git -C "$REPO_ROOT" ls-files -z -co --exclude-standard \
          | tar -C "$REPO_ROOT" --null -T - -czf "$tarball"
      else
        tar -C "$REPO_ROOT" --exclude=.git --exclude=runs --exclude=__pycache__ -czf "$tarball" .
      fi
    fi
    x gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME":bigbigan_src.tar.gz \
      "${GCLOUD_ARGS[@]}" --worker=all
    rm -f "$tarball"
    fetch="mkdir -p $REMOTE_DIR && tar -xzf ~/bigbigan_src.tar.gz -C $REMOTE_DIR \
&& rm ~/bigbigan_src.tar.gz"
  fi
  # TPU VM images ship Python 3.10; jax 0.10 needs >= 3.11, so uv brings its own interpreter.
  on_all_workers "set -e; $fetch
command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
export PATH=\$HOME/.local/bin:\$PATH
[ -x $VENV/bin/python ] || uv venv --python $PYTHON_VERSION $VENV
uv pip install --python $VENV/bin/python -e $REMOTE_DIR 'jax[tpu]>=0.10.2,<0.11'
$VENV/bin/python -c 'import bigbigan_jax, jax; print(\"\$(hostname): jax\", jax.__version__)'"
}

run() {
  [[ $# -gt 0 ]] || die "run needs the training flags, e.g. run --config=configs/base.py \
--workdir=gs://BUCKET/bigbigan/base"
  local args
  args="$(printf ' %q' "$@")"
  on_all_workers "cd $REMOTE_DIR || exit 1; nohup $VENV/bin/python -m bigbigan_jax.main$args \
--distributed >> train.log 2>&1 < /dev/null & echo \$! > $REMOTE_DIR/train.pid; \
echo \"\$(hostname): started pid \$(cat $REMOTE_DIR/train.pid), log $REMOTE_DIR/train.log\""
}

logs() {
  x gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_ARGS[@]}" --worker="${1:-0}" \
    --command="tail -n 100 -F $REMOTE_DIR/train.log"
}

stop() {
  on_all_workers "if [ -f $REMOTE_DIR/train.pid ]; then kill \$(cat $REMOTE_DIR/train.pid) \
2>/dev/null && echo \"\$(hostname): sent SIGTERM\" || true; rm -f $REMOTE_DIR/train.pid; fi"
}

ssh_cmd() {
  if [[ $# -gt 0 ]]; then
    on_all_workers "$*"
  else
    x gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_ARGS[@]}" --worker=0
  fi
}

case "$COMMAND" in
  create) create ;;
  setup) setup ;;
  run) run "$@" ;;
  logs) logs "$@" ;;
  stop) stop ;;
  ssh) ssh_cmd "$@" ;;
  status) x gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GCLOUD_ARGS[@]}" ;;
  delete) x gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_ARGS[@]}" --quiet ;;
  *) die "unknown command $COMMAND (create|setup|run|logs|stop|ssh|status|delete)" ;;
esac
