"""Run GRPO iterations of the tiny model on a mesh of 1 and of N fake CPU devices (one process),
plain and with the self-reflection loop; save each run's params (by checkpoint name), stats,
compile counts and XLA's temporaries per device of the first iteration's jits (sampler,
reference scoring, update; in the reflection runs the policy judging its images, and update).

Usage (from the repository root): python -m tests.helpers.grpo_mesh_script N OUT.npz
(sets XLA_FLAGS before importing jax)
"""
import sys

from tests.helpers.fake_devices import use_cpu_devices

n = int(sys.argv[1])
use_cpu_devices(n)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxgen import checkpoint as ckpt_lib, parallel  # noqa: E402
from jaxgen.sampling import understanding  # noqa: E402
from jaxgen.sampling import sampler  # noqa: E402
from jaxgen.train import grpo  # noqa: E402
from tests.helpers import rl_test_setup  # noqa: E402
from tests.helpers.xla_memory import temporaries_mib  # noqa: E402

STATS = ("reward_mean", "loss", "kl", "entropy_coef_text", "entropy_coef_image")


def run(config, policy, devices, prefix, out, memory=()):
    mesh = parallel.make_mesh({"fsdp": len(devices)}, devices=devices)
    runner = grpo.GRPORunner(config, policy=policy, mesh=mesh)
    stats = []
    sampler_before = sampler.compiled_count()
    first = lambda: stats.append(runner.iteration(0))  # noqa: E731
    if memory:
        owners = {"_update": runner, "_score": runner, "_sample_jit": sampler,
                  "yes_no_logit_from_codes": understanding}
        mem = temporaries_mib([(owners[name], name) for name in memory], first)
        for name, mib in mem.items():
            out[f"{prefix}_mem_{name}"] = mib
    else:
        first()
    stats.append(runner.iteration(1))
    for name, leaf in ckpt_lib.flatten(jax.device_get(runner.params)).items():
        out[f"{prefix}_p:{name}"] = leaf
    out[f"{prefix}_stats"] = np.array([[m[k] for k in STATS] for m in stats])
    out[f"{prefix}_rows"] = runner.rows
    out[f"{prefix}_update_compiles"] = runner._update._cache_size()
    out[f"{prefix}_sampler_compiles"] = sampler.compiled_count() - sampler_before
    out[f"{prefix}_max_devices"] = max(len(x.sharding.device_set)
                                       for x in jax.tree.leaves(runner.params))


def main():
    plain, reflect = rl_test_setup.grpo_config(False), rl_test_setup.grpo_config(True)
    policy = rl_test_setup.grpo_policy()
    out = {}
    for devices, suffix in ((jax.devices()[:1], "one"), (jax.devices()[:n], "many")):
        run(plain, policy, devices, suffix, out, memory=("_update", "_score", "_sample_jit"))
    for devices, suffix in ((jax.devices()[:1], "one"), (jax.devices()[:n], "many")):
        run(reflect, policy, devices, f"reflect_{suffix}", out,
            memory=("_update", "yes_no_logit_from_codes"))
    np.savez(sys.argv[2], **out)


main()
