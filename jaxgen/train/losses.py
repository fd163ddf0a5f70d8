"""Loss pieces as pure functions (shared by the SFT, VQ and GRPO trainers).

Conventions: losses are returned as (numerator, denominator) sums so gradient accumulation
and data parallelism average over *tokens of the whole global batch*, not over micro-batches.
All arithmetic is float32 whatever the compute dtype of the logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_nll(logits_blv, targets_bl):
    """Negative log-likelihood of `targets_bl` under `logits_blv`: f32[B, L]."""
    logits = logits_blv.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets_bl[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return lse - picked


def token_logprobs(logits_blv, targets_bl):
    """log p(target) per token: f32[B, L]."""
    return -token_nll(logits_blv, targets_bl)


def token_accuracy(logits_blv, targets_bl):
    """1.0 where the argmax equals the target: f32[B, L]."""
    return (jnp.argmax(logits_blv, axis=-1) == targets_bl).astype(jnp.float32)


def weighted_sum(values_bl, weights_bl):
    """(sum(values * weights), sum(weights)) as f32 scalars."""
    w = weights_bl.astype(jnp.float32)
    return jnp.sum(values_bl.astype(jnp.float32) * w), jnp.sum(w)


def weighted_cross_entropy(logits_blv, targets_bl, weights_bl):
    """(sum of weighted token NLL, sum of weights); divide for the token-mean loss."""
    return weighted_sum(token_nll(logits_blv, targets_bl), weights_bl)


def safe_ratio(num, den):
    """num / den, 0 where den == 0."""
    return jnp.where(den > 0, num / jnp.maximum(den, 1e-12), 0.0)


def sequence_mean(values_bl, mask_bl):
    """Per-sequence masked mean: f32[B] (0 for empty rows)."""
    m = mask_bl.astype(jnp.float32)
    return safe_ratio(jnp.sum(values_bl * m, axis=-1), jnp.sum(m, axis=-1))


# ------------------------------------------------------------------------------ VQ / GAN


def l2_reconstruction(pixels, target):
    """Mean squared error over all pixels (LlamaGen's reconstruction term)."""
    return jnp.mean(jnp.square(pixels.astype(jnp.float32) - target.astype(jnp.float32)))


def psnr(pixels, target, value_range: float = 2.0):
    """PSNR in dB per image for images in [-1, 1] (peak-to-peak `value_range`): f32[B]."""
    err = jnp.mean(jnp.square(jnp.clip(pixels, -1, 1) - target), axis=tuple(range(1, pixels.ndim)))
    return 10.0 * jnp.log10(value_range ** 2 / jnp.maximum(err, 1e-10))


def hinge_discriminator_loss(logits_real, logits_fake):
    """PatchGAN hinge loss for the discriminator."""
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def hinge_generator_loss(logits_fake):
    """Generator side of the hinge GAN: -mean(D(fake))."""
    return -jnp.mean(logits_fake)


def codebook_usage(codes, num_embeddings: int):
    """(fraction of codebook entries used, perplexity of the code histogram)."""
    counts = jnp.bincount(codes.reshape(-1), length=num_embeddings).astype(jnp.float32)
    p = counts / jnp.maximum(jnp.sum(counts), 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.mean((counts > 0).astype(jnp.float32)), jnp.exp(entropy)
