"""What the RL mesh and multi-host scripts share: the test rewards and the tiny GRPO / Flow-GRPO
configs, so that a run on 1 device, on 8 devices in one process and on 2 processes x 4 devices
is the same run. Import after XLA_FLAGS is set (it imports jax)."""
import os

import jax
import numpy as np

from jaxgen import checkpoint as ckpt_lib
from jaxgen.config import load_config
from jaxgen.models import flow
from jaxgen.rewards import register_reward
from tests.helpers.tiny_models import tiny_janus
from tests.helpers.tiny_tokenizer import make_tokenizer


LOW_CODES = "low_codes"


@register_reward(LOW_CODES)
def _low_codes(context, threshold: int = 32):
    """Fraction of image tokens below `threshold`: a NumPy reward the policy can learn."""
    return lambda b: (np.asarray(b.image_tokens) < threshold).mean(axis=1).astype(np.float32)


@register_reward("dark_image")
def _dark_image(context):
    """1 - mean pixel value: a NumPy reward of the decoded images."""
    return lambda b: 1.0 - np.asarray(b.images, np.float32).mean(axis=(1, 2, 3)) / 255.0


def grpo_config(reflect: bool, overrides=()):
    """Tiny GRPO, 32 rows per rollout (8 prompts x 4): KL to the reference, two minibatches, the
    adaptive entropy state, plain SGD (so runs compare the update itself, not Adam's
    normalisation of near-zero gradients); `reflect`: the self-reflection loop, 2 images per
    row, the policy judging each."""
    extra = ["--config.reflection.max_images=2",
             "--config.reflection.max_text_tokens=48"] if reflect else []
    config = load_config("grpo:tiny", [
        "--config.grpo.loss.beta=0.05", "--config.grpo.minibatches=2",
        "--config.grpo.prompts_per_step=8", "--config.grpo.entropy.adaptive=True",
        "--config.optim.name=sgd", "--config.optim.learning_rate=1.0",
        "--config.sampling.max_think_tokens=2", *extra, *overrides])
    config.rewards = {"name": LOW_CODES}
    return config


def grpo_policy():
    """(params, JanusConfig, tokenizer) of a random tiny policy: `janus:tiny` (the model of
    `grpo:tiny`) from PRNGKey(0), with the test tokenizer."""
    config, params = tiny_janus()
    return params, config, make_tokenizer()


def flow_policy(workdir) -> str:
    """Write a random tiny flow checkpoint to <workdir>/policy (its decoder already predicts
    something: fresh output layers are zero) and return its path."""
    jc, params = tiny_janus()
    fc = flow.FlowConfig.from_dict(load_config("flow:tiny").flow)
    fp = flow.init_flow_params(fc, jc, jax.random.PRNGKey(1))
    fp["decoder"]["patch_out"]["kernel"] = 0.05 * jax.random.normal(
        jax.random.PRNGKey(2), fp["decoder"]["patch_out"]["kernel"].shape)
    return str(ckpt_lib.save_flow_checkpoint(os.path.join(workdir, "policy"), params, jc,
                                             make_tokenizer(), fp, fc))


def flow_config(policy: str, overrides=()):
    """Tiny Flow-GRPO of `policy`, 32 images per rollout (8 prompts x 4): KL on the step means,
    two minibatch steps per rollout (the second one's ratio is off 1), plain SGD. At lr 0.5 the
    meshes' float-level differences (5e-5 in the params after iteration 1) flip a nearest-code
    snap of the next rollout's images, whose reward then differs (4e-4), and so the update."""
    config = load_config("flow_grpo:tiny", [
        f"--config.policy={policy}", "--config.grpo.beta=0.04", "--config.grpo.clip_eps=0.5",
        "--config.grpo.prompts_per_step=8", "--config.grpo.minibatches=2",
        "--config.optim.name=sgd", "--config.optim.learning_rate=0.1",
        "--config.sampling.max_think_tokens=2", "--config.sampling.cfg_weight=2.0", *overrides])
    config.rewards = {"name": "dark_image"}
    return config
