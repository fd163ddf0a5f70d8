"""GRPO for reasoning-then-image generation: `configs/grpo.py:<arg>`.

Command:
    jaxgen train grpo --config configs/grpo.py:shapes --workdir /tmp/grpo \\
        --config.policy_checkpoint=SFT_DIR --config.judge_checkpoint=JUDGE_DIR

Variants:
  shapes           ShapesWorld policy (an SFT'd jaxgen checkpoint) rewarded by the yes/no VLM
                   judge (a ShapesWorld judge checkpoint) on ShapesWorld RL 'train' prompts.
                   2-core CPU: ~6 s per iteration, 30 iterations ~3 minutes; the mean reward
                   rises visibly within that budget (see the GRPO report for measured numbers).
  shapes_caption   the same with the caption-likelihood reward ('vlm_caption') of a ShapesWorld
                   judge trained on the 'describe' task (configs/sft.py data.judge_task).
  shapes_caption_vq  the caption reward plus 3 x 'vq_consistency' (the policy tokenizer's
                   round trip); the demo's choice (see configs/demo.py).
  shapes_detector  the same with the pixel-only GenEval-style detector as reward (no judge).
  tiny             a random tiny model for tests (needs --config.tokenizer or a policy dict).
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
        advantage="grpo", per_reward_norm=False, dynamic_sampling=True, advantage_clip=0.0,
        # groups whose rewards spread by less than this carry no signal (a judge's P(yes) jitters
        # by ~1e-3 when it cannot tell the samples apart; normalising that would amplify noise)
        dynamic_sampling_tol=0.02,
        # scales negative advantages: 1 plain GRPO, 0 only the samples that beat their group
        negative_advantage_scale=1.0,
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
