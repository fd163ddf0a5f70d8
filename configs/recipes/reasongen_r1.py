"""ReasonGen-R1 GRPO recipe: `configs/recipes/reasongen_r1.py:<arg>`, arg in 7b | 1b | shapes.

Command (1b: the same with `:1b` and 1B checkpoints):
    jaxgen train grpo --config configs/recipes/reasongen_r1.py:7b --workdir W \\
        --config.policy_checkpoint=REASONGEN_SFT_DIR --config.judge_checkpoint=JUDGE_DIR \\
        --config.data.path=PROMPTS.jsonl
Paper setup: Janus-Pro-7B after CoT SFT; 8x A100/H100 class GPUs; GRPO G=8, 8 prompts per step,
lr 5e-6, 400 steps, clip 0.2, no KL, dynamic sampling (groups with zero reward std dropped),
CFG weight 1 during RL, adaptive entropy (text target 2.0, image target 7.0, alpha = sinh(psi)
clamped to +-5e-3, lr 5e-5); reward: a VLM (Qwen2.5-VL-7B) answers ending in \\boxed{1}/\\boxed{0}.
Here the judge is any model of the unified architecture (a Hugging Face Janus-Pro directory or
a jaxgen checkpoint, e.g. Janus-Pro-7B), since it runs on the policy's mesh; Qwen2.5-VL is not
loadable.
Variants:
  7b, 1b  the paper's recipe. No run measured: it needs the CoT SFT checkpoint
          (configs/sft.py:janus_pro_7b / janus_pro_1b), a judge, a JSONL of {'prompt',
          'metadata'} records and GPUs. The paper reports GenEval overall ~+6 points over
          Janus-Pro-7B, with gains on counting / position.
  shapes  ShapesWorld policy + judge, 30 iterations x 4 prompts x 8:
          `--config configs/recipes/reasongen_r1.py:shapes` with a ShapesWorld policy and judge
          (e.g. --config.policy_checkpoint=runs/demo/sft/final); not timed, no result measured.
"""

import ml_collections

from jaxgen.config import load_config, use_janus_policy
from jaxgen.models.config import ConfigError


def get_config(arg=None):
    arg = arg or "7b"
    c = load_config("grpo:shapes")
    c.grpo.update(dict(group_size=8, prompts_per_step=8, advantage="grpo", dynamic_sampling=True,
                       cfg_mode="none", per_reward_norm=False))
    c.grpo.loss.update(dict(eps_low=0.2, eps_high=0.2, beta=0.0, aggregation="token_mean"))
    c.grpo.entropy.update(dict(adaptive=True, text_target=2.0, image_target=7.0, lr=5e-5,
                               max_coef=5e-3))
    c.sampling.update(dict(cfg_weight=1.0, max_think_tokens=256, temperature=1.0))
    c.rewards = ml_collections.ConfigDict({"name": "vlm_boxed", "kwargs": {
        "judge": "judge", "max_new_tokens": 256, "max_text_tokens": 256}})
    c.optim.update(dict(learning_rate=5e-6, schedule="constant", weight_decay=0.0))
    c.total_steps = 400
    if arg in ("7b", "1b"):
        use_janus_policy(c, arg)
        return c
    if arg == "shapes":
        c.total_steps = 30
        c.grpo.prompts_per_step = 4
        c.sampling.max_think_tokens = 24
        c.rewards.kwargs.update(dict(max_new_tokens=8, max_text_tokens=96))
        c.optim.learning_rate = 1e-4
        return c
    raise ConfigError(f"unknown variant {arg!r}; use 7b, 1b or shapes")
