"""Run Flow-GRPO iterations of a tiny flow decoder on a mesh of 1 and of N fake CPU devices (one
process); save both runs' flow params (by checkpoint name), stats, compile counts and XLA's
temporaries per device of the first iteration's rollout and update.

Usage (from the repository root): python -m tests.helpers.flow_mesh_script N WORKDIR OUT.npz
(sets XLA_FLAGS before importing jax; the random policy is written to WORKDIR/policy)
"""
import sys

from tests.helpers.fake_devices import use_cpu_devices

n = int(sys.argv[1])
use_cpu_devices(n)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxgen import checkpoint as ckpt_lib, parallel  # noqa: E402
from jaxgen.train import flow_grpo  # noqa: E402
from tests.helpers import rl_test_setup  # noqa: E402
from tests.helpers.xla_memory import temporaries_mib  # noqa: E402

STATS = ("reward_mean", "loss", "kl", "ratio_mean")


def run(config, devices, prefix, out):
    mesh = parallel.make_mesh({"fsdp": len(devices)}, devices=devices)
    runner = flow_grpo.FlowGRPORunner(config, mesh=mesh)
    stats = []
    mem = temporaries_mib([(runner, "_update"), (runner, "_rollout")],
                          lambda: stats.append(runner.iteration(0)))
    stats.append(runner.iteration(1))
    for name, mib in mem.items():
        out[f"{prefix}_mem_{name}"] = mib
    for name, leaf in ckpt_lib.flatten(jax.device_get(runner.flow_params)).items():
        out[f"{prefix}_p:{name}"] = leaf
    out[f"{prefix}_stats"] = np.array([[m[k] for k in STATS] for m in stats])
    out[f"{prefix}_rows"] = runner.batch_size
    out[f"{prefix}_update_compiles"] = runner._update._cache_size()
    out[f"{prefix}_rollout_compiles"] = runner._rollout._cache_size()
    out[f"{prefix}_max_devices"] = max(len(x.sharding.device_set)
                                       for x in jax.tree.leaves(runner.flow_params))


def main():
    config = rl_test_setup.flow_config(rl_test_setup.flow_policy(sys.argv[2]))
    out = {}
    run(config, jax.devices()[:1], "one", out)
    run(config, jax.devices()[:n], "many", out)
    np.savez(sys.argv[3], **out)


main()
