"""Run GRPO iterations of the tiny model on a mesh of 1 and of N fake CPU devices (one process);
save both runs' params, stats and compile counts.

Usage: python grpo_mesh_script.py N OUT.npz   (sets XLA_FLAGS before importing jax)
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
from jaxgen.config import load_config  # noqa: E402
from jaxgen.models import janus  # noqa: E402
from jaxgen.rewards import register_reward  # noqa: E402
from jaxgen.sampling import sampler  # noqa: E402
from jaxgen.train import grpo  # noqa: E402


@register_reward("low_codes")
def _low_codes(context, threshold: int = 32):
    """Fraction of image tokens below `threshold` (a reward the policy can learn)."""
    return lambda b: (np.asarray(b.image_tokens) < threshold).mean(axis=1).astype(np.float32)


def run(config, policy, devices, prefix, out):
    from jaxgen import parallel
    mesh = parallel.make_mesh({"fsdp": len(devices)}, devices=devices)
    runner = grpo.GRPORunner(config, policy=policy, mesh=mesh)
    stats = []
    sampler_before = sampler.compiled_count()
    for it in range(2):
        m = runner.iteration(it)
        stats.append([m["reward_mean"], m["loss"], m["kl"]])
    for i, leaf in enumerate(jax.tree.leaves(jax.device_get(runner.params))):
        out[f"{prefix}_p{i}"] = leaf
    out[f"{prefix}_stats"] = np.array(stats)
    out[f"{prefix}_update_compiles"] = runner._update._cache_size()
    out[f"{prefix}_sampler_compiles"] = sampler.compiled_count() - sampler_before
    out[f"{prefix}_max_devices"] = max(len(x.sharding.device_set)
                                       for x in jax.tree.leaves(runner.params))


def main():
    config = load_config("grpo:tiny", [
        "--config.grpo.loss.beta=0.05", "--config.grpo.minibatches=2",
        "--config.grpo.inner_epochs=1", "--config.grpo.prompts_per_step=4",
        "--config.optim.name=sgd", "--config.optim.learning_rate=1.0",
        "--config.sampling.max_think_tokens=2"])
    config.rewards = {"name": "low_codes"}
    model_config = janus.config_from_configdict(config.model)
    params = jax.jit(janus.init_params, static_argnums=0)(model_config, jax.random.PRNGKey(0))
    policy = (params, model_config, make_tokenizer())
    out = {}
    run(config, policy, jax.devices()[:1], "one", out)
    run(config, policy, jax.devices()[:n], "many", out)
    # the Janus-Pro-R1 self-reflection loop: 2 images per row, the policy judging itself
    reflect = config.copy_and_resolve_references()
    reflect.reflection.max_images = 2
    reflect.reflection.max_text_tokens = 48
    run(reflect, policy, jax.devices()[:1], "reflect_one", out)
    run(reflect, policy, jax.devices()[:n], "reflect_many", out)
    np.savez(sys.argv[2], **out)


main()
