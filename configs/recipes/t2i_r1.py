"""T2I-R1 (BiCoT-GRPO) recipe: `configs/recipes/t2i_r1.py:<arg>`, arg in 7b | 1b | shapes.

Command (1b: the same with `:1b` and Janus-Pro-1B):
    jaxgen train grpo --config configs/recipes/t2i_r1.py:7b --workdir W \\
        --config.policy_checkpoint=JANUS_PRO_7B_DIR --config.judge_checkpoint=JUDGE_DIR \\
        --config.data.path=PROMPTS.jsonl
Paper setup: Janus-Pro-7B without SFT; 8 GPUs (A100 80GB class); semantic CoT (<= 50 words) then
the image from "{prompt}. {CoT}"; one loss over text + image tokens with one advantage, G=8,
lr 1e-6, beta 0.01 (k3 KL), 1,600 steps; image log-probs from the conditional logits; reward =
ensemble of HPS, GIT VQA P(yes), GroundingDINO rules and an ORM yes/no (here: the yes/no VLM
judge + the GenEval-style detector + a caption-format reward, summed).
Variants:
  7b, 1b  the paper's recipe. No run measured: it needs a Janus-Pro checkpoint (a Hugging Face
          directory or `jaxgen convert hf-to-jax` output), a judge, a JSONL of {'prompt',
          'metadata'} records and GPUs. The paper reports T2I-CompBench colour / shape / texture
          81.3 / 58.5 / 72.4 (from 63.6 / 35.3 / 49.4 for Janus-Pro-7B), GenEval ~0.79.
  shapes  ShapesWorld policy + judge, 30 iterations x 4 prompts x 8:
          `--config configs/recipes/t2i_r1.py:shapes` with a ShapesWorld policy and yes/no judge
          (e.g. --config.policy_checkpoint=runs/demo/sft/final); not timed, no result measured.
"""

import ml_collections

from jaxgen.config import load_config, use_janus_policy
from jaxgen.models.config import ConfigError


def get_config(arg=None):
    arg = arg or "7b"
    c = load_config("grpo:shapes")
    c.grpo.update(dict(group_size=8, prompts_per_step=8, advantage="grpo", dynamic_sampling=False,
                       cfg_mode="conditional", per_reward_norm=False))
    c.grpo.loss.update(dict(eps_low=0.2, eps_high=0.2, beta=0.01, aggregation="sequence_mean"))
    c.sampling.update(dict(cfg_weight=5.0, max_think_tokens=64, uncond_hides="prompt"))
    c.rewards = ml_collections.ConfigDict({"op": "sum", "terms": [
        {"name": "vlm_yes_no", "weight": 1.0, "kwargs": {"judge": "judge", "max_text_tokens": 96}},
        {"name": "geneval", "weight": 1.0},
        {"name": "format", "weight": 0.2, "kwargs": {"mode": "caption", "max_words": 50}}]})
    c.optim.update(dict(learning_rate=1e-6, schedule="constant"))
    c.total_steps = 1600
    if arg in ("7b", "1b"):
        use_janus_policy(c, arg)
        return c
    if arg == "shapes":
        c.total_steps = 30
        c.grpo.prompts_per_step = 4
        c.sampling.max_think_tokens = 24
        c.grpo.loss.beta = 0.01
        c.optim.learning_rate = 1e-4
        return c
    raise ConfigError(f"unknown variant {arg!r}; use 7b, 1b or shapes")
