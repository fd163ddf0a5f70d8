#!/usr/bin/env bash
# Run a jaxgen job on every worker of a Cloud TPU pod slice.
# Usage: launch/tpu_pod.sh TPU_NAME ZONE "train grpo --config configs/recipes/t2i_r1.py:1b --workdir /mnt/shared/run --config.policy_checkpoint=/mnt/shared/janus_pro_1b --config.data.path=/mnt/shared/prompts.jsonl"
set -euo pipefail
tpu_name=$1; zone=$2; job=$3
gcloud compute tpus tpu-vm ssh "$tpu_name" --zone "$zone" --worker=all --command \
  "cd ~/jaxgen && JAXGEN_DISTRIBUTED=1 jaxgen $job"
