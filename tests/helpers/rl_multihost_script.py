"""One RL run (`grpo.train` or `flow_grpo.train`, the configs of rl_test_setup) as one of NPROC
processes (8 / NPROC fake CPU devices each, `jax.distributed` over a local coordinator when
NPROC > 1), on one mesh over all 8 devices, checkpointing every iteration.

Usage (from the repository root): python -m tests.helpers.rl_multihost_script MODE PID NPROC
PORT WORKDIR TOTAL_STEPS [FLOW_POLICY]
MODE: grpo (the self-reflection loop) or flow (Flow-GRPO of FLOW_POLICY).
"""
import sys

from tests.helpers.fake_devices import use_cpu_devices

mode, pid, nproc, port, workdir, total = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                                          sys.argv[4], sys.argv[5], int(sys.argv[6]))
use_cpu_devices(8 // nproc)

import jax  # noqa: E402

if nproc > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # several JAX processes compiling on 2 cores can starve one past the default 100 s
    # heartbeat (seen once, at the shutdown barrier, with two tests' processes side by side)
    jax.distributed.initialize(f"127.0.0.1:{port}", nproc, pid, heartbeat_timeout_seconds=600)

from jaxgen.train import flow_grpo, grpo  # noqa: E402
from tests.helpers import rl_test_setup  # noqa: E402

RUN = [f"--config.total_steps={total}", "--config.checkpoint_every=1"]
if mode == "flow":
    flow_grpo.train(rl_test_setup.flow_config(sys.argv[7], RUN), workdir)
else:
    config = rl_test_setup.grpo_config(True, RUN)
    grpo.train(config, workdir, policy=rl_test_setup.grpo_policy())
