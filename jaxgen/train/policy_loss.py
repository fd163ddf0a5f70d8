"""GRPO policy loss: clipped importance ratio, optional k3 KL and entropy bonus, aggregation.

Per token t of sample b, with ratio rho = exp(logp - logp_old) and advantage A_b:
    pg    = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)
    kl    = exp(ref - logp) - (ref - logp) - 1           (k3 estimator, >= 0)
    loss  = pg + beta kl
Aggregation over masked tokens: 'token_mean' (sum over every token of the batch / token count,
DAPO) or 'sequence_mean' (mean per sequence, then mean over sequences; DeepSeekMath GRPO).
The entropy bonus is separate for text and image tokens (ReasonGen-R1): loss -= c_text H_text +
c_image H_image, each H aggregated like the loss over its own tokens. ReasonGen-R1's adaptive
coefficients are c = clip(sinh(psi), -c_max, c_max) with psi moved toward the entropy target by
`adaptive_entropy_update` once per update (outside the gradient).

Gradient accumulation: `loss_normalisers` computes every aggregation's denominator over a whole
minibatch; given them, each micro-batch's loss and metrics are its share of the minibatch's, so
their sum over micro-batches (and the sum of their gradients) equals the whole-minibatch value.

Text and image streams arrive separately (shapes [B,T] and [B,N]) and are concatenated along
time, so one advantage covers the whole reasoning-then-image sequence (T2I-R1 BiCoT-GRPO), or,
given a (text, image) pair of advantages and keep weights, each stream gets its own (a reward of
the reasoning for the reasoning tokens, of the drawing for the image tokens).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxgen.errors import UserError
from jaxgen.registry import Registry

AGGREGATIONS = ("token_mean", "sequence_mean")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Static (hashable) loss settings; see module docstring for the formulas."""
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.0  # KL weight; 0 skips the reference model entirely
    aggregation: str = "token_mean"
    text_weight: float = 1.0  # per-token loss weight of reasoning tokens
    image_weight: float = 1.0  # per-token loss weight of image tokens

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise UserError(f"unknown loss aggregation {self.aggregation!r}; choose one of "
                            f"{AGGREGATIONS} (config field grpo.loss.aggregation)")
        if self.eps_low < 0 or self.eps_high < 0:
            raise UserError("clip epsilons must be >= 0 (grpo.loss.eps_low / eps_high)")


class TokenBatch(NamedTuple):
    """Per-token inputs of the loss for one stream (text or image), all float32[B, L]."""
    logp: jax.Array
    old_logp: jax.Array
    mask: jax.Array
    ref_logp: jax.Array | None = None
    entropy: jax.Array | None = None


def k3_kl(logp, ref_logp):
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(d) - d - 1 with d = ref - logp."""
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


def clipped_surrogate(logp, old_logp, adv, eps_low, eps_high):
    """Per-token -min(rho A, clip(rho) A) and the ratio rho; all shapes [B, L]."""
    ratio = jnp.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    return -jnp.minimum(unclipped, clipped), ratio


def normaliser(mask_bl, how: str):
    """The denominator `aggregate` divides by: the token count ('token_mean') or the number of
    sequences with a token ('sequence_mean'), at least 1."""
    mask = mask_bl.astype(jnp.float32)
    if how == "token_mean":
        return jnp.maximum(mask.sum(), 1.0)
    if how == "sequence_mean":
        return jnp.maximum((mask.sum(axis=1) > 0).astype(jnp.float32).sum(), 1.0)
    raise UserError(f"unknown aggregation {how!r}; choose one of {AGGREGATIONS}")


def aggregate(values_bl, mask_bl, how: str, total=None):
    """Masked mean of per-token values: 'token_mean' or 'sequence_mean' (see module doc).
    total: the denominator of a whole minibatch (gradient accumulation); None: this batch's."""
    total = normaliser(mask_bl, how) if total is None else total
    mask = mask_bl.astype(jnp.float32)
    if how == "token_mean":
        return (values_bl * mask).sum() / total
    per_seq = (values_bl * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
    has_tokens = (mask.sum(axis=1) > 0).astype(jnp.float32)
    return (per_seq * has_tokens).sum() / total


def stream_masks(text_mask_bt, image_mask_bn, keep_b):
    """(text, image) token masks with each sample's keep weight folded in."""
    keep_text, keep_image = per_stream(keep_b)
    tmask = text_mask_bt.astype(jnp.float32) * keep_text.astype(jnp.float32)[:, None]
    imask = image_mask_bn.astype(jnp.float32) * keep_image.astype(jnp.float32)[:, None]
    return tmask, imask


def loss_normalisers(text_mask_bt, image_mask_bn, keep_b, cfg: "LossConfig") -> dict:
    """Every denominator grpo_loss uses, over a whole minibatch (see module doc)."""
    tmask, imask = stream_masks(text_mask_bt, image_mask_bn, keep_b)
    mask = jnp.concatenate([tmask, imask], axis=1)
    return {"tokens": normaliser(mask, "token_mean"), "loss": normaliser(mask, cfg.aggregation),
            "text": normaliser(tmask, cfg.aggregation),
            "image": normaliser(imask, cfg.aggregation)}


def per_stream(x):
    """(text, image) of a per-sample value given once for both streams or as a pair."""
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


def grpo_loss(text: TokenBatch, image: TokenBatch, adv_b, keep_b, cfg: LossConfig,
              entropy_coef_text=0.0, entropy_coef_image=0.0, normalisers: dict | None = None):
    """Scalar GRPO loss over reasoning + image tokens, and a dict of metrics.

    Args:
      text, image: TokenBatch streams ([B,T] and [B,N]); T may be 0.
      adv_b: float32[B] advantages, or a (text, image) pair of them; keep_b: float32[B] sample
        weights (dynamic sampling), or a pair.
      entropy_coef_text/_image: scalars (may be traced: adaptive coefficients).
      normalisers: `loss_normalisers` of the whole minibatch this batch is a micro-batch of.
    """
    n = normalisers or {}
    logp = jnp.concatenate([text.logp, image.logp], axis=1)
    old = jnp.concatenate([text.old_logp, image.old_logp], axis=1)
    tmask, imask = stream_masks(text.mask, image.mask, keep_b)
    mask = jnp.concatenate([tmask, imask], axis=1)
    weight = jnp.concatenate([jnp.full_like(tmask, cfg.text_weight),
                              jnp.full_like(imask, cfg.image_weight)], axis=1)
    adv_text, adv_image = per_stream(adv_b)
    adv = jnp.concatenate([jnp.broadcast_to(adv_text[:, None], tmask.shape),
                           jnp.broadcast_to(adv_image[:, None], imask.shape)], axis=1)
    pg, ratio = clipped_surrogate(logp, old, adv, cfg.eps_low, cfg.eps_high)
    per_token = pg
    metrics = {}
    if cfg.beta > 0:
        if text.ref_logp is None or image.ref_logp is None:
            raise UserError("beta > 0 needs reference log-probs; set grpo.loss.beta=0 or keep "
                            "the reference model")
        ref = jnp.concatenate([text.ref_logp, image.ref_logp], axis=1)
        kl = k3_kl(logp, ref)
        per_token = per_token + cfg.beta * kl
        metrics["kl"] = aggregate(kl, mask, "token_mean", n.get("tokens"))
    loss = aggregate(per_token * weight, mask, cfg.aggregation, n.get("loss"))
    if text.entropy is not None and image.entropy is not None:
        h_text = aggregate(text.entropy, tmask, cfg.aggregation, n.get("text"))
        h_image = aggregate(image.entropy, imask, cfg.aggregation, n.get("image"))
        loss = loss - entropy_coef_text * h_text - entropy_coef_image * h_image
        metrics["entropy_text"] = h_text
        metrics["entropy_image"] = h_image
    low = (ratio < 1.0 - cfg.eps_low) & (adv < 0)
    high = (ratio > 1.0 + cfg.eps_high) & (adv > 0)
    metrics["clip_frac_low"] = aggregate(low.astype(jnp.float32), mask, "token_mean",
                                         n.get("tokens"))
    metrics["clip_frac_high"] = aggregate(high.astype(jnp.float32), mask, "token_mean",
                                          n.get("tokens"))
    metrics["ratio"] = aggregate(ratio, mask, "token_mean", n.get("tokens"))
    metrics["pg_loss"] = aggregate(pg, mask, cfg.aggregation, n.get("loss"))
    return loss, metrics


def adaptive_entropy_coef(psi, max_coef: float):
    """ReasonGen-R1 coefficient alpha = clip(sinh(psi), -max_coef, max_coef)."""
    return jnp.clip(jnp.sinh(psi), -max_coef, max_coef)


def adaptive_entropy_update(psi, entropy, target: float, lr: float):
    """One step of psi toward the target: entropy below target raises alpha (more bonus).

    Gradient step on psi for the objective alpha(psi) * (entropy - target), i.e.
    psi <- psi - lr * cosh(psi) * (entropy - target).
    """
    return psi - lr * jnp.cosh(psi) * (entropy - target)


POLICY_LOSSES = Registry("policy loss", "grpo.loss.name")
register_policy_loss = POLICY_LOSSES.register
get_policy_loss = POLICY_LOSSES.get
register_policy_loss("grpo")(grpo_loss)
