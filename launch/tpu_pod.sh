#!/usr/bin/env bash
# Run a jaxgen job on every worker of a Cloud TPU pod slice.
# Usage: launch/tpu_pod.sh TPU_NAME ZONE "train sft --config configs/sft.py:janus_pro_1b --workdir gs://bucket/run"
set -euo pipefail
tpu_name=$1; zone=$2; job=$3
gcloud compute tpus tpu-vm ssh "$tpu_name" --zone "$zone" --worker=all --command \
  "cd ~/jaxgen && JAXGEN_DISTRIBUTED=1 jaxgen $job"
