"""GoT-R1 GRPO recipe: `configs/recipes/got_r1.py:<arg>`, arg in 7b | 1b | shapes.

Command (1b: the same with `:1b` and 1B checkpoints):
    jaxgen train grpo --config configs/recipes/got_r1.py:7b --workdir W \\
        --config.policy_checkpoint=GOT_SFT_DIR --config.judge_checkpoint=JUDGE_DIR \\
        --config.data.path=PROMPTS.jsonl
Paper setup: Janus-Pro-1B/7B with a layout-plan reasoning chain
(`<obj>name</obj> <box>(x1,y1),(x2,y2)</box>` on a 0-1000 grid); 8 GPUs; GRPO N=16 samples per
prompt, 1,000 steps on T2I-CompBench + LAION-Aesthetics prompts (RL code never released; the
paper's lr etc. are not all public: lr 1e-6 and beta 0.0 here are our choice, stated as such);
reward R = R_PI * (R_sem + R_spa) * R_RI (prompt-image, reasoning semantics, planned layout on a
blank canvas, planned-vs-detected box IoU). R_RI alone collapses training.
Variants:
  7b, 1b  the paper's recipe. No run measured: it needs a GoT-style SFT checkpoint (layout-plan
          reasoning), a judge, a JSONL of {'prompt', 'metadata'} records and GPUs. The paper
          (third-party tables) reports GoT-R1-7B GenEval 0.75, T2I-CompBench colour / shape /
          texture 81.4 / 55.5 / 73.4.
  shapes  ShapesWorld prompts, 30 iterations x 4 prompts x 8; a rule-based plan check replaces
          the text judge for R_sem (a ShapesWorld judge only reads images), the detector gives
          R_RI. `--config configs/recipes/got_r1.py:shapes` with a ShapesWorld policy and judge
          (e.g. --config.policy_checkpoint=runs/demo/sft/final); not timed, no result measured.
"""

import ml_collections

from jaxgen.config import load_config, use_janus_policy
from jaxgen.models.config import ConfigError


def got_reward(sem="got_semantic", spa="got_spatial"):
    judge = {"judge": "judge", "max_text_tokens": 192}
    sem_node = {"name": sem, "kwargs": judge} if sem.startswith("got_") else {"name": sem}
    return {"op": "product", "terms": [
        {"name": "got_prompt_image", "kwargs": {"judge": "judge", "max_text_tokens": 96}},
        {"op": "sum", "terms": [sem_node, {"name": spa, "kwargs": judge}]},
        {"name": "got_box_iou"}]}


def get_config(arg=None):
    arg = arg or "7b"
    c = load_config("grpo:shapes")
    c.grpo.update(dict(group_size=16, prompts_per_step=4, advantage="grpo", dynamic_sampling=True,
                       cfg_mode="cfg", per_reward_norm=False))
    c.grpo.loss.update(dict(eps_low=0.2, eps_high=0.2, beta=0.0, aggregation="token_mean"))
    c.sampling.update(dict(cfg_weight=5.0, max_think_tokens=128))
    c.rewards = ml_collections.ConfigDict(got_reward())
    c.optim.update(dict(learning_rate=1e-6, schedule="constant"))
    c.total_steps = 1000
    if arg in ("7b", "1b"):
        use_janus_policy(c, arg)
        c.sampling.uncond_hides = "prompt"  # Janus-Pro was trained with prompt-only dropout
        return c
    if arg == "shapes":
        c.total_steps = 30
        c.grpo.update(dict(group_size=8, prompts_per_step=4))
        c.sampling.max_think_tokens = 48
        c.rewards = ml_collections.ConfigDict(got_reward(sem="plan_prompt_match"))
        c.optim.learning_rate = 1e-4
        return c
    raise ConfigError(f"unknown variant {arg!r}; use 7b, 1b or shapes")
