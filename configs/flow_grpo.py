"""Flow-GRPO on the diffusion path: `configs/flow_grpo.py:<arg>`, arg in shapes | tiny.

Command (after `jaxgen train flow`, whose <workdir>/final holds the unified model and the flow
decoder):
    jaxgen train flow_grpo --config configs/flow_grpo.py:shapes --workdir runs/flow_grpo \
        --config.policy=runs/flow/final
Runtime: 8.3 s per iteration on a 2-core CPU, 2026-11-24, with one optimizer step per rollout
(rollout 2.5 s: the 112-token plan and 10 flow steps with CFG; reward 0.7 s; update 5.1 s), so
64 iterations in about 9 minutes; this config's two minibatch steps updated 0.8-1.0 s faster
than one step over all 32 images (random shapes-size models, side by side, 2026-11-24).
Result: <workdir>/final (the policy's layout), metrics.jsonl with the reward, clip fraction and KL
per iteration. Measured 2026-11-24 from a 3500-step flow decoder (held-out 3.1%): the detector
reward was 0 in 13 of 16 iterations, so most groups carry no advantage; the dense
`vq_consistency` reward rose 0.083 -> 0.095 by 8-iteration blocks. Held-out accuracy after
Flow-GRPO was not measured (docs/experiments.md: Does Flow-GRPO have a reward signal on a CPU?).
Flow-GRPO's recipe (SD3.5-M, 24 images per prompt): 10 SDE steps for training and 40 for
evaluation, noise level 0.7, CFG 4.5 kept while training, two optimizer steps per rollout (each
on half the images, all their steps), ratio clip 1e-4, KL beta 0.04, advantages clipped to +-5,
the GenEval detector as reward (63% -> 95% on GenEval); here the pixel-only ShapesWorld detector
(`geneval`) on train prompts, which is what the paper rewards.
Variants:
  shapes  the recipe at CPU size (4 x 8 images, steps 0-3 of 10 trained, MixGRPO /
          Flow-GRPO-Fast style: the early, high-noise steps decide the layout).
  tiny    2 iterations, a few seconds, for tests; pass --config.policy (a tiny flow checkpoint).
"""

import ml_collections

from jaxgen.models.config import ConfigError


def get_config(arg=None):
    arg = arg or "shapes"
    if arg not in ("shapes", "tiny"):
        raise ConfigError(f"unknown flow_grpo config {arg!r}; use shapes or tiny")
    shapes = arg == "shapes"
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.policy = ""  # a flow checkpoint dir (`jaxgen train flow` writes <workdir>/final)
    c.total_steps = 64 if shapes else 2
    c.checkpoint_every = 8 if shapes else 1
    c.keep_checkpoints = 2
    # The reasoning is frozen, so only the drawing can improve: rollouts from the categories whose
    # layout plans the SFT model writes right (docs/experiments.md: Which prompts should GRPO roll
    # out from?)
    c.data = dict(source="shapes", split="train",
                  categories=("single_object", "two_object", "counting", "cb_shape")
                  if shapes else (), path="", max_prompt_tokens=32 if shapes else 24)
    c.sampling = dict(max_think_tokens=112 if shapes else 0, temperature=1.0, cfg_weight=4.5,
                      num_steps=10 if shapes else 3, shift=1.0, noise_level=0.7)
    c.grpo = dict(group_size=8 if shapes else 4, prompts_per_step=4 if shapes else 2,
                  advantage="grpo", per_reward_norm=False, dynamic_sampling=False,
                  advantage_clip=5.0,
                  # trained (stochastic) steps [first, stop); the others are ODE steps
                  sde_window=(0, 4) if shapes else (0, 3),
                  clip_eps=1e-4, beta=0.04 if shapes else 0.0,
                  # optimizer steps per rollout = inner_epochs x minibatches (Flow-GRPO: 1 x 2);
                  # docs/experiments.md: How many optimizer steps per Flow-GRPO rollout?
                  inner_epochs=1, minibatches=2 if shapes else 1,
                  # micro-batches per optimizer step (gradients summed: same update, less memory)
                  grad_accum_steps=1)
    c.rewards = {"name": "geneval"} if shapes else {"name": "constant"}
    c.optim = dict(name="adamw", learning_rate=1e-4 if shapes else 1e-3, warmup_steps=0,
                   schedule="constant", end_lr_ratio=1.0, b1=0.9, b2=0.999, eps=1e-8,
                   weight_decay=1e-4, grad_clip_norm=1.0)
    c.mesh = dict(data=1, fsdp=-1, tensor=1, layout="fsdp")
    return ml_collections.ConfigDict(c)
