"""GRPO's settings, read and validated from the config once, before anything is loaded.

`grpo_settings(config) -> GRPOSettings` turns the config's `grpo`, `sampling`, `reflection` and
`data` fields into frozen values: batch geometry, the sampler's options, how log-probs are
recomputed (static under jit) and the policy loss. Every inconsistency a user can write raises
one UserError naming the field and the fix.
"""

from __future__ import annotations

import dataclasses
import warnings

from jaxgen.errors import UserError
from jaxgen.sampling import sampler as sampler_lib
from jaxgen.sampling.scoring import CFG_MODES
from jaxgen.train import advantages as adv_lib
from jaxgen.train import policy_loss as loss_lib
from jaxgen.train import reflection as reflection_lib

OLD_LOGPROBS = ("auto", "sampler", "recompute", "detached")
# Short names the demo uses for the two checkpoint paths.
ALIASES = {"policy_ckpt": "policy_checkpoint", "judge_ckpt": "judge_checkpoint"}


@dataclasses.dataclass(frozen=True)
class ScoreSettings:
    """How log-probs are recomputed (static under jit)."""
    cfg_mode: str
    cfg_weight: float
    uncond_hides: str
    temperature: float
    image_temperature: float


@dataclasses.dataclass(frozen=True)
class UpdateSettings:
    score: ScoreSettings
    loss: loss_lib.LossConfig
    old_mode: str  # 'detached' | 'given'
    self_eval: reflection_lib.SelfEvalSettings | None = None  # the reflection loop's answers
    policy_loss: str = "grpo"  # a name in policy_loss.POLICY_LOSSES
    accum_steps: int = 1  # micro-batches whose gradients one optimizer step sums


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    group_size: int
    num_prompts: int
    batch_size: int  # prompts x group size
    max_images: int  # the self-reflection loop's images per trajectory (0: plain GRPO)
    rows: int  # rows of one update batch: every image of every trajectory
    minibatches: int
    inner_epochs: int
    negative_scale: float
    old_mode: str  # 'detached' | 'recompute' | 'sampler'
    options: sampler_lib.SampleOptions
    score: ScoreSettings
    loss: loss_lib.LossConfig
    policy_loss: str
    accum_steps: int


def apply_aliases(config):
    """Accept the short names policy_ckpt / judge_ckpt (used by the demo) for the two paths."""
    for short, full in ALIASES.items():
        if short in config and config[short] and not config.get(full):
            config[full] = config[short]


def grpo_settings(config) -> GRPOSettings:
    g, s = config.grpo, config.sampling
    group_size, num_prompts = int(g.group_size), int(g.prompts_per_step)
    rc = config.get("reflection") or {}
    max_images = int(rc.get("max_images", 0) or 0)
    rows = group_size * num_prompts * max(1, max_images)
    if max_images and g.get("text_rewards"):
        raise UserError("grpo.text_rewards cannot be combined with reflection.max_images > 0 "
                        "(a trajectory has one advantage from R_Gen and R_Comp)")
    if g.cfg_mode not in CFG_MODES:
        raise UserError(f"grpo.cfg_mode={g.cfg_mode!r}; choose one of {CFG_MODES}")
    # configs written before the field existed resume as plain GRPO
    negative_scale = adv_lib.check_negative_scale(g.get("negative_advantage_scale", 1.0))
    if negative_scale < 1.0 and g.cfg_mode == "conditional" and float(s.cfg_weight) != 1.0:
        # Measured on the demo policy (docs/experiments.md: Which log-probs should GRPO
        # update?): 8 positive-only steps on one rollout raise the rewarded samples'
        # conditional log-prob by ~32 nats and lower their log-prob under the CFG sampler by
        # ~32; the weights shared with the unconditional row move it too.
        warnings.warn("grpo.negative_advantage_scale < 1 with cfg_mode='conditional' trains "
                      "a distribution the CFG sampler does not draw from: the rewarded "
                      "samples can become less likely for the sampler. Use "
                      "grpo.cfg_mode='cfg'.", stacklevel=3)
    if g.old_logprobs not in OLD_LOGPROBS:
        raise UserError(f"grpo.old_logprobs={g.old_logprobs!r}; choose one of {OLD_LOGPROBS}")
    minibatches, inner_epochs = int(g.minibatches), int(g.inner_epochs)
    if minibatches < 1 or inner_epochs < 1 or rows % minibatches:
        raise UserError(f"batch {rows} (prompts_per_step x group_size x images per trajectory) "
                        f"does not split into grpo.minibatches={g.minibatches}, or "
                        f"grpo.inner_epochs={g.inner_epochs} is below 1")
    cfg_weight = 1.0 if g.cfg_mode == "none" else float(s.cfg_weight)
    options = sampler_lib.SampleOptions(
        max_think_tokens=int(s.max_think_tokens), temperature=float(s.temperature),
        top_k=int(s.top_k), top_p=float(s.top_p), image_temperature=float(s.image_temperature),
        cfg_weight=cfg_weight, uncond_hides=s.uncond_hides)
    score = ScoreSettings(g.cfg_mode, cfg_weight, s.uncond_hides, float(s.temperature),
                          float(s.image_temperature))
    old_mode = g.old_logprobs
    if old_mode == "auto":
        old_mode = "detached" if inner_epochs * minibatches == 1 else "recompute"
    if old_mode == "detached" and inner_epochs * minibatches != 1:
        raise UserError("old_logprobs='detached' is exact only for one update per rollout; use "
                        "'recompute' or 'sampler' with inner_epochs/minibatches > 1")
    lc = g.loss
    loss = loss_lib.LossConfig(
        eps_low=float(lc.eps_low), eps_high=float(lc.eps_high), beta=float(lc.beta),
        aggregation=lc.aggregation, text_weight=float(lc.text_weight),
        image_weight=float(lc.image_weight))
    policy_loss = str(lc.get("name", "grpo"))
    loss_lib.get_policy_loss(policy_loss)  # an unknown name fails here, before any loading
    accum = int(g.get("grad_accum_steps", 1))
    if accum < 1 or (rows // minibatches) % accum:
        raise UserError(f"grpo.grad_accum_steps={accum} must be >= 1 and divide the "
                        f"{rows // minibatches} rows of a minibatch")
    if accum > 1 and max_images:
        raise UserError("grpo.grad_accum_steps > 1 is not supported with the self-reflection "
                        "loop (reflection.max_images > 0); use grpo.minibatches instead")
    return GRPOSettings(group_size, num_prompts, group_size * num_prompts, max_images, rows,
                        minibatches, inner_epochs, negative_scale, old_mode, options, score, loss,
                        policy_loss, accum)


def update_settings(settings: GRPOSettings, self_eval=None) -> UpdateSettings:
    """The jitted update's static settings (self_eval: the reflection loop's answer settings)."""
    return UpdateSettings(settings.score, settings.loss,
                          "detached" if settings.old_mode == "detached" else "given", self_eval,
                          settings.policy_loss, settings.accum_steps)
