"""GRPO for reasoning-then-image generation: `configs/grpo.py:<arg>`.

Command (a ShapesWorld SFT policy and judge, e.g. from `jaxgen demo`):
    jaxgen train grpo --config configs/grpo.py:shapes_caption_vq --workdir runs/grpo \
        --config.policy_checkpoint=runs/demo/sft/final \
        --config.judge_checkpoint=runs/demo/judge/final
Result: <workdir>/final (a jaxgen checkpoint like the policy's) and metrics.jsonl with the reward
(total and each term) per iteration. With these family defaults (all categories, lr 1e-4) GRPO
lowered held-out accuracy on the demo's models (4.5% -> 2.3% with the detector as reward,
2026-11-23); configs/demo.py holds the measured recipe.
Variants (the same command with another name after the colon):
  shapes             the yes/no VLM judge (a ShapesWorld judge trained with data.judge_task=
                     'yes_no') on ShapesWorld RL 'train' prompts; ~6 s per iteration, 30 in ~3
                     min on a 2-core CPU, 2026-11-22. Yes/no judges trained at the demo's budgets
                     answered at chance, so expect no held-out gain.
  shapes_caption     the caption-likelihood reward ('vlm_caption') of a 'describe' judge.
  shapes_caption_vq  the caption reward plus 3 x 'vq_consistency' (the policy tokenizer's round
                     trip). The demo's GRPO stage (its overrides: configs/demo.py): 40 iterations
                     in 153 s on a 2-core CPU (float32 matmul 297.5 GFLOP/s), 2026-12-02, held-out
                     GRPO - SFT -2.0 points (95% interval -4.5 to +0.3).
  shapes_detector    the pixel-only GenEval-style detector as reward (no judge; an upper bound):
                     3.06 s per iteration (`jaxgen bench grpo`) on a 2-core CPU (float32 matmul
                     296 GFLOP/s), 2026-12-02; with the demo's rollout categories and lr 3e-5,
                     192 iterations gave +5.7 held-out points (95% interval +3.3 to +8.2),
                     2026-11-24.
  tiny               a random tiny model for tests (needs --config.tokenizer or a policy dict).
Paper recipes (with Janus-Pro-7B / 1B hyperparameters) are in configs/recipes/.
"""

import ml_collections

from jaxgen.config import load_config
from jaxgen.models.config import ConfigError

from jaxgen.data.judge import QUESTION


YES_NO_JUDGE = {"name": "vlm_yes_no", "kwargs": {
    "judge": "judge",  # = config.judge_checkpoint
    "question_template": QUESTION,  # the question the ShapesWorld judge is trained on
    "max_text_tokens": 64}}
CAPTION_JUDGE = {"name": "vlm_caption", "kwargs": {
    "judge": "judge",  # = config.judge_checkpoint
    "baseline": "blank",  # subtract the judge's prompt prior (its blank-image likelihood)
    "max_text_tokens": 32, "max_answer_tokens": 48}}
DETECTOR = {"name": "geneval"}
# The judge's caption reward plus the policy tokenizer's round-trip consistency (label-free
# drawing quality, jaxgen/rewards/tokenizer_consistency.py). Weight 3: on SFT rollouts of the
# drawing categories both terms spread equally within a group (std ~0.08) and the within-prompt
# AUC against the detector peaks there (judge 0.51, consistency 0.63, sum 0.61, 1:3 0.65).
# docs/experiments.md: Which reward for the demo's GRPO?
CAPTION_JUDGE_AND_VQ = {"op": "sum", "terms": [CAPTION_JUDGE,
                                               {"name": "vq_consistency", "weight": 3.0}]}


def base_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 30
    c.checkpoint_every = 10
    c.keep_checkpoints = 2  # the newest N checkpoints (resume needs one)
    # also keep every checkpoint whose step is a multiple of this (0: none): held-out
    # accuracy can fall while the reward rises, so a run's trajectory is worth evaluating
    c.keep_checkpoint_every = 0
    c.policy_checkpoint = ""  # jaxgen checkpoint dir (SFT'd policy); empty: random init of model
    c.judge_checkpoint = ""  # jaxgen checkpoint dir of the reward VLM (rewards with judge='judge')
    c.tokenizer = ""  # only for a random init without a checkpoint
    c.model = load_config("janus:shapes").model  # a random init's model (no policy_checkpoint)
    # execution options applied to the loaded policy (scan_layers, remat_policy, dtype,
    # attention_impl; jaxgen.models.janus.with_execution_options); empty: the checkpoint's own
    c.model_options = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict(dict(
        source="shapes", split="train", categories=(), path="", max_prompt_tokens=32))
    c.sampling = ml_collections.ConfigDict(dict(
        max_think_tokens=0, temperature=1.0, top_k=0, top_p=1.0, image_temperature=1.0,
        # the unconditional CFG row hides prompt and plan, as configs/sft.py:shapes trains it, so
        # guidance amplifies what the layout plan asks for
        cfg_weight=3.0, uncond_hides="prompt_and_reasoning"))
    c.grpo = ml_collections.ConfigDict(dict(
        group_size=8, prompts_per_step=4, inner_epochs=1, minibatches=1,
        # micro-batches per optimizer step (their gradients summed: the same update, less memory)
        grad_accum_steps=1,
        advantage="grpo", per_reward_norm=False, dynamic_sampling=True, advantage_clip=0.0,
        # groups whose rewards spread by less than this carry no signal (a judge's P(yes) jitters
        # by ~1e-3 when it cannot tell the samples apart; normalising that would amplify noise)
        dynamic_sampling_tol=0.02,
        # scales negative advantages: 1 plain GRPO, 0 only the samples that beat their group
        negative_advantage_scale=1.0,
        # the sampler's own (CFG) log-probs: with the detector as reward +5.7 vs +2.1 points for
        # conditional ones. docs/experiments.md: Which log-probs should GRPO update?
        cfg_mode="cfg", old_logprobs="auto",
        # a reward tree for the reasoning tokens alone (e.g. {'name': 'plan_layout'}); empty:
        # `rewards` gives one advantage to reasoning and image tokens alike (T2I-R1)
        text_rewards=ml_collections.ConfigDict(),
        loss=dict(eps_low=0.2, eps_high=0.28, beta=0.0, aggregation="token_mean",
                  text_weight=1.0, image_weight=1.0),
        entropy=dict(adaptive=False, text_coef=0.0, image_coef=0.0, text_target=2.0,
                     image_target=7.0, lr=5e-5, max_coef=5e-3)))
    c.rewards = ml_collections.ConfigDict(YES_NO_JUDGE)
    # Janus-Pro-R1 self-reflection (jaxgen/train/reflection.py): max_images T > 0 makes each
    # rollout up to T images, the policy judging each with `question` (yes ends the loop); the
    # reward tree is R_QA of every image (keep it in [0, 1]) and a trajectory's advantage is
    # reward_weights . (R_Gen, R_Comp); self_eval_weight: the loss weight of the policy's yes/no
    # answers (0: they do not train). max_images 0: plain GRPO.
    c.reflection = ml_collections.ConfigDict(dict(
        max_images=0, yes_threshold=0.5, question=QUESTION, max_text_tokens=64,
        reward_weights=(1.0, 1.0), self_eval_weight=1.0))
    c.optim = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-4, warmup_steps=0, schedule="constant", end_lr_ratio=1.0,
        b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0))
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, layout="fsdp"))
    return c


def get_config(arg=None):
    arg = arg or "shapes"
    c = base_config()
    if arg == "shapes":
        return c
    if arg == "shapes_caption":
        c.rewards = ml_collections.ConfigDict(CAPTION_JUDGE)
        return c
    if arg == "shapes_caption_vq":
        c.rewards = ml_collections.ConfigDict(CAPTION_JUDGE_AND_VQ)
        return c
    if arg == "shapes_detector":
        c.rewards = ml_collections.ConfigDict(DETECTOR)
        return c
    if arg == "tiny":
        c.model = load_config("janus:tiny").model
        c.total_steps = 2
        c.checkpoint_every = 1
        c.grpo.group_size = 4
        c.grpo.prompts_per_step = 2
        c.data.max_prompt_tokens = 24
        c.rewards = ml_collections.ConfigDict({"name": "constant"})
        return c
    raise ConfigError(f"unknown grpo variant {arg!r}; use shapes, shapes_caption, "
                     "shapes_caption_vq, shapes_detector or tiny")
