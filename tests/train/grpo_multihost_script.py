"""`grpo.train` of the tiny policy as one of NPROC processes (8 / NPROC fake CPU devices each,
`jax.distributed` over a local coordinator when NPROC > 1), on one mesh over all 8 devices.

Usage: python grpo_multihost_script.py PID NPROC PORT WORKDIR TOTAL_STEPS
"""
import os
import sys

pid, nproc, port, workdir, total = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4],
                                    int(sys.argv[5]))
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // nproc}"
os.environ["JAX_PLATFORMS"] = "cpu"
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "rewards"))
sys.path.insert(0, os.path.join(HERE, "..", ".."))

import jax  # noqa: E402

if nproc > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", nproc, pid)

import numpy as np  # noqa: E402

from tiny_tokenizer import make_tokenizer  # noqa: E402
from jaxgen.config import load_config  # noqa: E402
from jaxgen.models import janus  # noqa: E402
from jaxgen.rewards import register_reward  # noqa: E402
from jaxgen.train import grpo  # noqa: E402


@register_reward("low_codes")
def _low_codes(context, threshold: int = 32):
    """Fraction of image tokens below `threshold`: a NumPy reward, read on every host."""
    return lambda b: (np.asarray(b.image_tokens) < threshold).mean(axis=1).astype(np.float32)


config = load_config("grpo:tiny", [
    f"--config.total_steps={total}", "--config.checkpoint_every=1",
    "--config.grpo.loss.beta=0.05", "--config.grpo.minibatches=2",
    "--config.grpo.prompts_per_step=4", "--config.grpo.entropy.adaptive=True",
    "--config.optim.name=sgd", "--config.optim.learning_rate=1.0",
    "--config.sampling.max_think_tokens=2"])
config.rewards = {"name": "low_codes"}
mc = janus.config_from_configdict(config.model)
params = jax.jit(janus.init_params, static_argnums=0)(mc, jax.random.PRNGKey(0))
grpo.train(config, workdir, policy=(params, mc, make_tokenizer()))
