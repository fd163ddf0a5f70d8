"""Optimizer and learning-rate schedules from a config block.

config.optim fields (see configs/sft.py): name ('adamw' | 'sgd'), learning_rate, warmup_steps,
schedule ('cosine' | 'linear' | 'constant' | 'linear_then_cosine'), end_lr_ratio (final lr as
a fraction of the peak), b1, b2, eps, weight_decay, grad_clip_norm (0 disables), decay_steps
(0: the run's total steps), and for 'linear_then_cosine' (Janus-Pro-R1 GRPO: linear to
mid_lr_ratio over linear_steps, then cosine to end_lr_ratio) mid_lr_ratio, linear_steps.
Weight decay skips vectors (norm scales, biases), the usual AdamW practice.
"""

from __future__ import annotations

import jax
import optax

from jaxgen.errors import UserError

SCHEDULES = ("cosine", "linear", "constant", "linear_then_cosine")


def make_schedule(optim_config, total_steps: int) -> optax.Schedule:
    """Warmup (linear from 0) then the named decay, over `decay_steps` or `total_steps`."""
    oc = optim_config
    peak = float(oc.learning_rate)
    warmup = int(oc.get("warmup_steps", 0))
    decay_steps = int(oc.get("decay_steps", 0)) or int(total_steps)
    end = peak * float(oc.get("end_lr_ratio", 0.0))
    name = oc.get("schedule", "cosine")
    rest = max(decay_steps - warmup, 1)
    if name == "cosine":
        main = optax.cosine_decay_schedule(peak, rest, alpha=end / peak if peak else 0.0)
    elif name == "linear":
        main = optax.linear_schedule(peak, end, rest)
    elif name == "constant":
        main = optax.constant_schedule(peak)
    elif name == "linear_then_cosine":
        mid = peak * float(oc.get("mid_lr_ratio", 1.0))
        linear_steps = int(oc.get("linear_steps", rest))
        main = optax.join_schedules(
            [optax.linear_schedule(peak, mid, linear_steps),
             optax.cosine_decay_schedule(mid, max(rest - linear_steps, 1),
                                         alpha=end / mid if mid else 0.0)],
            [linear_steps])
    else:
        raise UserError(f"unknown lr schedule {name!r}; choose one of {list(SCHEDULES)} "
                        "(--config.optim.schedule=...)")
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def _decay_mask(params):
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_optimizer(config, total_steps: int | None = None,
                   frozen: tuple = ()) -> optax.GradientTransformation:
    """AdamW (or SGD) with clipping and the schedule; `config` is the job config or its .optim.

    `frozen` (or config.optim.frozen): top-level parameter keys that never change (e.g. the VQ
    tokenizer 'vqmodel' during SFT); they get no optimizer state and no weight decay.
    """
    oc = config.optim if "optim" in config else config
    frozen = tuple(frozen) or tuple(oc.get("frozen", ()))
    if total_steps is None:
        total_steps = int(config.get("total_steps", 0) or oc.get("decay_steps", 0) or 1)
    schedule = make_schedule(oc, total_steps)
    name = oc.get("name", "adamw")
    if name == "adamw":
        opt = optax.adamw(schedule, b1=float(oc.get("b1", 0.9)), b2=float(oc.get("b2", 0.999)),
                          eps=float(oc.get("eps", 1e-8)),
                          weight_decay=float(oc.get("weight_decay", 0.0)), mask=_decay_mask)
    elif name == "sgd":
        opt = optax.sgd(schedule, momentum=float(oc.get("momentum", 0.0)) or None)
    else:
        raise UserError(f"unknown optimizer {name!r}; choose 'adamw' or 'sgd' "
                        "(--config.optim.name=...)")
    clip = float(oc.get("grad_clip_norm", 0.0))
    if clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(clip), opt)
    if frozen:
        def labels(params):
            return {k: jax.tree.map(lambda _, k=k: "frozen" if k in frozen else "train", v)
                    for k, v in params.items()}
        opt = optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()}, labels)
    return opt
