"""Group advantages for GRPO, from a registry of estimators.

Layout: a batch of B = P * G samples is group-contiguous: sample i answers prompt i // G.
Every estimator maps rewards float32[B] to advantages float32[B] and is a pure jnp function, so
it runs inside jit on device as well as on NumPy inputs.

Estimators (GRPO, RLOO, Dr. GRPO):
  'grpo'           (r - mean_g) / (std_g + eps)                      (DeepSeekMath GRPO)
  'rloo'           r_i - mean_{j != i} r_j = G / (G - 1) (r_i - mean_g)  (leave-one-out)
  'mean_centred'   r - mean_g                                         (Dr. GRPO)
Multi-reward inputs float32[B, K] (one column per reward stream) are either summed with weights
first and normalised once, or normalised per stream then summed (Janus-Pro-R1, GDPO).
Negative advantages can be scaled down (`negative_scale` < 1; 0 keeps only the samples that beat
their group, as RAFT / rejection-sampling fine-tuning does): with sparse rewards most of a group
sits below its mean, and pushing those samples down dominates the update.
Dynamic sampling (ReasonGen-R1, DAPO) keeps shapes fixed: a group whose rewards are all equal
gets weight 0 in `group_keep_mask` instead of being removed, so nothing recompiles.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from jaxgen.errors import UserError
from jaxgen.registry import Registry

# Estimators `f(rewards_b, group_size, **kw) -> adv_b`.
ESTIMATORS = Registry("advantage estimator", "grpo.advantage")
register_advantage = ESTIMATORS.register
get_advantage_fn = ESTIMATORS.get
available = ESTIMATORS.names


def _groups(rewards_b, group_size: int):
    rewards_b = jnp.asarray(rewards_b, jnp.float32)
    if rewards_b.ndim != 1 or rewards_b.shape[0] % group_size:
        raise UserError(f"rewards of shape {rewards_b.shape} do not split into groups of "
                        f"{group_size}; the batch must hold num_prompts * group_size samples")
    return rewards_b.reshape(-1, group_size)


@register_advantage("grpo")
def grpo_advantages(rewards_b, group_size: int, eps: float = 1e-4, std_ddof: int = 0):
    """(r - group mean) / (group std + eps); std with `std_ddof` (0 population, 1 unbiased)."""
    r_pg = _groups(rewards_b, group_size)
    mean = r_pg.mean(axis=1, keepdims=True)
    std = jnp.std(r_pg, axis=1, keepdims=True, ddof=std_ddof)
    return ((r_pg - mean) / (std + eps)).reshape(-1)


@register_advantage("rloo")
def rloo_advantages(rewards_b, group_size: int, **unused):
    """r_i minus the mean of the other G - 1 rewards of its group (needs G >= 2)."""
    if group_size < 2:
        raise UserError("leave-one-out advantages need group_size >= 2; raise grpo.group_size")
    r_pg = _groups(rewards_b, group_size)
    others = (r_pg.sum(axis=1, keepdims=True) - r_pg) / (group_size - 1)
    return (r_pg - others).reshape(-1)


@register_advantage("mean_centred")
def mean_centred_advantages(rewards_b, group_size: int, **unused):
    """r minus its group mean, no scaling (Dr. GRPO)."""
    r_pg = _groups(rewards_b, group_size)
    return (r_pg - r_pg.mean(axis=1, keepdims=True)).reshape(-1)


def group_keep_mask(rewards_b, group_size: int, tol: float = 1e-6):
    """float32[B]: 1 where the sample's group has reward spread > tol, else 0 (dynamic sampling)."""
    r_pg = _groups(rewards_b, group_size)
    spread = r_pg.max(axis=1) - r_pg.min(axis=1)
    keep_p = (spread > tol).astype(jnp.float32)
    return jnp.repeat(keep_p, group_size)


def check_negative_scale(scale) -> float:
    """`scale` as a float in [0, 1] (1: plain GRPO, 0: positive advantages only), else an error."""
    scale = float(scale)
    if not 0.0 <= scale <= 1.0:
        raise UserError(f"grpo.negative_advantage_scale={scale} must lie in [0, 1] "
                        "(1: plain GRPO, 0: positive advantages only)")
    return scale


def compute_advantages(rewards_bk, group_size: int, estimator: str = "grpo",
                       weights: Sequence[float] | None = None, per_reward_norm: bool = False,
                       dynamic_sampling: bool = False, clip: float = 0.0,
                       dynamic_sampling_tol: float = 1e-6, negative_scale: float = 1.0,
                       **estimator_kw):
    """Advantages from one or several reward streams.

    Args:
      rewards_bk: float32[B] or float32[B, K] (K reward streams, group-contiguous rows).
      weights: K stream weights (default all 1).
      per_reward_norm: normalise each stream with the estimator, then take the weighted sum;
        otherwise take the weighted sum of raw rewards and normalise once.
      dynamic_sampling: zero the advantage (and the returned keep mask) of groups whose summed
        reward is constant (max - min <= dynamic_sampling_tol; DAPO's all-equal rule for
        binary rewards; a continuous judge needs a tolerance above its noise, or group
        normalisation turns that noise into full-size advantages).
      clip: if > 0, clip advantages to [-clip, clip] (Flow-GRPO uses 5).
      negative_scale: multiplies the negative advantages (after clipping); 1 is plain GRPO,
        0 learns from the better-than-group samples only.
    Returns:
      (advantages_b float32[B], keep_b float32[B], total_reward_b float32[B]).
    """
    r = jnp.asarray(rewards_bk, jnp.float32)
    if r.ndim == 1:
        r = r[:, None]
    k = r.shape[1]
    w = jnp.ones((k,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    if w.shape != (k,):
        raise UserError(f"{w.shape[0]} reward weights for {k} reward streams; give one weight "
                        "per reward")
    fn = get_advantage_fn(estimator)
    total_b = r @ w
    if per_reward_norm:
        cols = [fn(r[:, j], group_size, **estimator_kw) for j in range(k)]
        adv_b = jnp.stack(cols, axis=1) @ w
    else:
        adv_b = fn(total_b, group_size, **estimator_kw)
    keep_b = jnp.ones_like(total_b)
    if dynamic_sampling:
        keep_b = group_keep_mask(total_b, group_size, dynamic_sampling_tol)
        adv_b = adv_b * keep_b
    if clip > 0:
        adv_b = jnp.clip(adv_b, -clip, clip)
    if check_negative_scale(negative_scale) != 1.0:
        adv_b = jnp.where(adv_b < 0, adv_b * negative_scale, adv_b)
    return adv_b, keep_b, total_b
