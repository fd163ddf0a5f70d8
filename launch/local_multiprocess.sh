#!/usr/bin/env bash
# Two processes on this machine (4 fake CPU devices each), the way a 2-host run behaves.
# Usage: launch/local_multiprocess.sh "train sft --config configs/sft.py:tiny --workdir /tmp/mh"
# Exits non-zero if either process fails. JAX_COORDINATOR_ADDRESS may be set to another port.
set -euo pipefail
job=$1
addr=${JAX_COORDINATOR_ADDRESS:-127.0.0.1:12355}
pids=()
for pid in 0 1; do
  XLA_FLAGS=--xla_force_host_platform_device_count=4 JAXGEN_DISTRIBUTED=1 \
  JAX_COORDINATOR_ADDRESS=$addr JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=$pid \
  jaxgen $job &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do
  wait "$p" || status=$?
done
exit $status
