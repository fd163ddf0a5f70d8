#!/usr/bin/env bash
# Two processes on this machine (4 fake CPU devices each), the way a 2-host run behaves.
# Usage: launch/local_multiprocess.sh "train sft --config configs/sft.py:tiny --workdir /tmp/mh"
set -euo pipefail
job=$1
for pid in 0 1; do
  XLA_FLAGS=--xla_force_host_platform_device_count=4 JAXGEN_DISTRIBUTED=1 \
  JAX_COORDINATOR_ADDRESS=127.0.0.1:12355 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=$pid \
  jaxgen $job &
done
wait
