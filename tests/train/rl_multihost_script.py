"""One RL run of a tiny policy as one of NPROC processes (8 / NPROC fake CPU devices each,
`jax.distributed` over a local coordinator when NPROC > 1), on one mesh over all 8 devices.

Usage: python rl_multihost_script.py MODE PID NPROC PORT WORKDIR TOTAL_STEPS [FLOW_POLICY]
MODE: grpo (the self-reflection loop with 2 images per row, a NumPy reward, KL, 2 minibatches,
adaptive entropy) or flow (Flow-GRPO of FLOW_POLICY: NumPy rewards of the decoded images and of
the image tokens, KL, 2 minibatches).
"""
import os
import sys

mode, pid, nproc, port, workdir, total = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                                          sys.argv[4], sys.argv[5], int(sys.argv[6]))
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
from jaxgen.train import flow_grpo, grpo  # noqa: E402


@register_reward("low_codes")
def _low_codes(context, threshold: int = 32):
    """Fraction of image tokens below `threshold`: a NumPy reward, read on every host."""
    return lambda b: (np.asarray(b.image_tokens) < threshold).mean(axis=1).astype(np.float32)


@register_reward("dark_image")
def _dark_image(context):
    """1 - mean pixel value: a NumPy reward of the decoded images."""
    return lambda b: 1.0 - np.asarray(b.images, np.float32).mean(axis=(1, 2, 3)) / 255.0


def run_grpo():
    config = load_config("grpo:tiny", [
        f"--config.total_steps={total}", "--config.checkpoint_every=1",
        # the policy judges each image; its answers are drawn from the iteration's seed
        "--config.reflection.max_images=2", "--config.reflection.max_text_tokens=48",
        "--config.grpo.loss.beta=0.05", "--config.grpo.minibatches=2",
        "--config.grpo.prompts_per_step=4", "--config.grpo.entropy.adaptive=True",
        "--config.optim.name=sgd", "--config.optim.learning_rate=1.0",
        "--config.sampling.max_think_tokens=2"])
    config.rewards = {"name": "low_codes"}
    mc = janus.config_from_configdict(config.model)
    params = jax.jit(janus.init_params, static_argnums=0)(mc, jax.random.PRNGKey(0))
    grpo.train(config, workdir, policy=(params, mc, make_tokenizer()))


def run_flow(policy: str):
    config = load_config("flow_grpo:tiny", [
        f"--config.policy={policy}", f"--config.total_steps={total}",
        "--config.checkpoint_every=1", "--config.grpo.beta=0.04", "--config.grpo.clip_eps=0.5",
        "--config.grpo.minibatches=2", "--config.optim.name=sgd",
        "--config.optim.learning_rate=0.1", "--config.sampling.max_think_tokens=2",
        "--config.sampling.cfg_weight=2.0"])
    config.rewards = {"op": "sum", "terms": [{"name": "dark_image"}, {"name": "low_codes"}]}
    flow_grpo.train(config, workdir)


if mode == "flow":
    run_flow(sys.argv[7])
else:
    run_grpo()
