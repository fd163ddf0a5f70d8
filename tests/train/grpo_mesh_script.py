"""Run two GRPO iterations of the tiny model on N fake CPU devices; save params and stats.

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


def main():
    config = load_config("grpo:tiny", [
        "--config.grpo.loss.beta=0.05", "--config.grpo.minibatches=2",
        "--config.grpo.inner_epochs=1", "--config.grpo.prompts_per_step=4", f"--config.mesh.fsdp={n}",
        "--config.optim.name=sgd", "--config.optim.learning_rate=1.0", "--config.sampling.max_think_tokens=3"])
    config.rewards = {"name": "low_codes"}
    model_config = janus.config_from_configdict(config.model)
    params = jax.jit(janus.init_params, static_argnums=0)(model_config, jax.random.PRNGKey(0))
    runner = grpo.GRPORunner(config, policy=(params, model_config, make_tokenizer()))
    stats = []
    for it in range(3):
        m = runner.iteration(it)
        stats.append([m["reward_mean"], m["loss"], m["kl"]])
    leaves = jax.tree.leaves(jax.device_get(runner.params))
    shards = {len(x.sharding.device_set) for x in jax.tree.leaves(runner.params)}
    np.savez(sys.argv[2], *leaves, stats=np.array(stats),
             update_compiles=runner._update._cache_size(),
             sampler_compiles=sampler.compiled_count(), max_devices=max(shards))


main()
