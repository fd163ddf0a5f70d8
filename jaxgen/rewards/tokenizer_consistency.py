"""A label-free drawing-quality reward from the policy's own VQ tokenizer.

A coherent drawing is (nearly) a fixed point of the tokenizer: decode its image tokens, save the
pixels as uint8, encode them again, and most codes come back. Codes that contradict their
neighbours (a malformed shape, a smear between two objects) decode to patches the encoder reads
as something else. The reward is the fraction of the N codes that survive the round trip,
float32[B] in [0, 1]; it needs no judge, no labels and no evaluator, only the policy's VQ.

Measured (docs/experiments.md, "Which reward for the demo's GRPO?", 2026-11-23): on SFT
rollouts of the demo's drawing categories (192 prompts x 8) it ranks evaluator-correct above wrong samples of the same prompt
with within-prompt AUC 0.63, higher than any trained judge so far (0.59).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxgen.errors import UserError
from jaxgen.models import janus
from jaxgen.rewards.base import RewardBatch, register_reward
from jaxgen.sampling.understanding import decoded_pixels


@functools.partial(jax.jit, static_argnames=("config",))
def surviving_code_fraction(params, config, codes_bn):
    """float32[B]: share of codes equal after decode -> uint8 rounding -> encode."""
    pixels = decoded_pixels(params, config, codes_bn)
    again = janus.vq_encode(params, config, pixels)
    return jnp.mean((again == codes_bn).astype(jnp.float32), axis=-1)


@register_reward("vq_consistency")
def make_vq_consistency(context):
    if context is None or context.policy_params_fn is None or context.policy_config is None:
        raise UserError("the 'vq_consistency' reward needs the policy's VQ tokenizer; build it "
                        "inside a GRPO run (RewardContext with policy_params_fn and policy_config)")

    def fn(batch: RewardBatch):
        if batch.image_tokens is None:
            raise UserError("the 'vq_consistency' reward reads image tokens; the reward batch "
                            "has none")
        return surviving_code_fraction(context.policy_params_fn(), context.policy_config,
                                       jnp.asarray(batch.image_tokens, jnp.int32))
    return fn
