"""Run Flow-GRPO iterations of a tiny flow decoder on a mesh of 1 and of N fake CPU devices (one
process); save both runs' flow params, stats and compile counts.

Usage: python flow_mesh_script.py N WORKDIR OUT.npz   (sets XLA_FLAGS before importing jax)
"""
import os
import sys

n = int(sys.argv[1])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
os.environ["JAX_PLATFORMS"] = "cpu"
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "rewards"))
sys.path.insert(0, os.path.join(HERE, "..", ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tiny_tokenizer import make_tokenizer  # noqa: E402
from jaxgen import parallel  # noqa: E402
from jaxgen.config import load_config  # noqa: E402
from jaxgen.models import flow, janus  # noqa: E402
from jaxgen.rewards import register_reward  # noqa: E402
from jaxgen.train import flow_grpo, flow_matching  # noqa: E402


@register_reward("dark_image")
def _dark_image(context):
    return lambda b: 1.0 - np.asarray(b.images, np.float32).mean(axis=(1, 2, 3)) / 255.0


def run(config, devices, prefix, out):
    mesh = parallel.make_mesh({"fsdp": len(devices)}, devices=devices)
    runner = flow_grpo.FlowGRPORunner(config, mesh=mesh)
    stats = []
    for it in range(2):
        m = runner.iteration(it)
        stats.append([m["reward_mean"], m["loss"], m["kl"], m["ratio_mean"]])
    for i, leaf in enumerate(jax.tree.leaves(jax.device_get(runner.flow_params))):
        out[f"{prefix}_p{i}"] = leaf
    out[f"{prefix}_stats"] = np.array(stats)
    out[f"{prefix}_update_compiles"] = runner._update._cache_size()
    out[f"{prefix}_rollout_compiles"] = runner._rollout._cache_size()
    out[f"{prefix}_max_devices"] = max(len(x.sharding.device_set)
                                       for x in jax.tree.leaves(runner.flow_params))


def main():
    workdir = sys.argv[2]
    jc = janus.config_from_configdict(load_config("janus:tiny").model)
    fc = flow.FlowConfig.from_dict(load_config("flow:tiny").flow)
    params = jax.jit(janus.init_params, static_argnums=0)(jc, jax.random.PRNGKey(0))
    fp = flow.init_flow_params(fc, jc, jax.random.PRNGKey(1))
    # a decoder that already predicts something (fresh output layers are zero)
    fp["decoder"]["patch_out"]["kernel"] = 0.05 * jax.random.normal(
        jax.random.PRNGKey(2), fp["decoder"]["patch_out"]["kernel"].shape)
    policy = flow_matching.save_flow_checkpoint(os.path.join(workdir, "policy"), params, jc,
                                                make_tokenizer(), fp, fc)
    config = load_config("flow_grpo:tiny", [
        f"--config.policy={policy}", "--config.grpo.beta=0.04", "--config.grpo.clip_eps=0.5",
        # two minibatch steps per rollout (the second one's ratio is off 1). At lr 0.5 the meshes'
        # float-level differences (5e-5 in the params after iteration 1) flip a nearest-code snap
        # of the next rollout's images, whose reward then differs (4e-4), and so the update
        "--config.optim.name=sgd", "--config.optim.learning_rate=0.1",
        "--config.grpo.minibatches=2",
        "--config.sampling.max_think_tokens=2", "--config.sampling.cfg_weight=2.0"])
    config.rewards = {"name": "dark_image"}
    out = {}
    run(config, jax.devices()[:1], "one", out)
    run(config, jax.devices()[:n], "many", out)
    np.savez(sys.argv[3], **out)


main()
