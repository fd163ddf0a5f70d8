"""Teacher-forced log-probs of a rollout: the differentiable side of GRPO.

One forward pass over [prompt; reasoning; <begin_of_image>; image tokens] (the same slot layout
and positions the sampler used, see sampler.py), plus the unconditional copy for cfg_mode='cfg',
batched as [cond rows; uncond rows] in the same pass.

cfg_mode decides the image-token distribution that is scored:
  'cfg'          u + w (c - u) with w = cfg_weight (what the sampler draws from; Janus-Pro-R1 style)
  'conditional'  the conditional logits c only (T2I-R1 style; sampled with CFG, scored without)
  'none'         no guidance anywhere (ReasonGen-R1 samples with cfg_weight 1): c only
Reasoning tokens are always scored with the conditional model.

Temperature convention (identical to the sampler): log softmax(logits / temperature) over the full
vocabulary, reasoning with `temperature`, image tokens with `image_temperature` applied after the
CFG combination; top-k / top-p do not enter. With matching temperatures, cfg_mode='cfg' and the
sampler's cfg_weight / uncond_hides, this reproduces Rollout.image_logprobs_bn and
Rollout.think_logprobs_bt. Positions outside think_mask_bt are 0 in every output.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxgen.errors import UserError
from jaxgen.models import janus
from jaxgen.sampling.sampler import (guided_logits, positions_from_mask, prefix_ids_and_mask,
                                     tempered_log_probs, unconditional_ids)

CFG_MODES = ("conditional", "cfg", "none")


def _token_stats(logits_blv, tokens_bl, temperature):
    """(log-prob of tokens [B, L], entropy [B, L]) of softmax(logits / temperature)."""
    logp = tempered_log_probs(logits_blv, temperature)
    lp = jnp.take_along_axis(logp, tokens_bl[..., None].astype(jnp.int32), axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return lp, entropy


def sequence_logprobs_and_entropy(params, config, rollout, cfg_mode: str = "cfg",
                                  cfg_weight: float = 5.0, uncond_hides: str = "prompt", *,
                                  temperature: float = 1.0, image_temperature: float = 1.0):
    """Teacher-forced (think_lp [B,T], image_lp [B,N], think_entropy [B,T], image_entropy [B,N]).

    Differentiable w.r.t. params; `config`, `cfg_mode`, `cfg_weight`, `uncond_hides` and the
    temperatures are Python values (static under jit).
    """
    if cfg_mode not in CFG_MODES:
        raise UserError(f"cfg_mode={cfg_mode!r} is unknown; use one of {CFG_MODES}")
    prompt_ids, think_ids = rollout.prompt_ids_bl, rollout.think_ids_bt
    think_mask = rollout.think_mask_bt.astype(bool)
    image_ids = rollout.image_ids_bn.astype(jnp.int32)
    b, l = prompt_ids.shape
    t = think_ids.shape[1]
    n = image_ids.shape[1]
    prefix_ids, prefix_mask = prefix_ids_and_mask(config, prompt_ids, rollout.prompt_mask_bl,
                                                  think_ids, think_mask)
    p = l + t + 1
    use_uncond = cfg_mode == "cfg" and float(cfg_weight) != 1.0
    if use_uncond:
        prefix_ids = jnp.concatenate(
            [prefix_ids, unconditional_ids(config, prefix_ids, l, uncond_hides)], 0)
        prefix_mask = jnp.concatenate([prefix_mask, prefix_mask], 0)
        image_ids_in = jnp.concatenate([image_ids, image_ids], 0)
    else:
        image_ids_in = image_ids
    rows = prefix_ids.shape[0]
    # The last image token is only a target, never an input.
    emb = jnp.concatenate([janus.embed_text(params, config, prefix_ids),
                           janus.embed_image_codes(params, config, image_ids_in[:, : n - 1])], 1)
    mask = jnp.concatenate([prefix_mask, jnp.ones((rows, n - 1), bool)], 1)
    hidden, _ = janus.decode(params, config, emb, positions_from_mask(mask), mask)

    # Slot s predicts slot s + 1: reasoning token j is read at slot l - 1 + j, image token i at p - 1 + i.
    think_hidden = hidden[:b, l - 1: l - 1 + t]
    think_lp, think_ent = _token_stats(janus.text_logits(params, config, think_hidden), think_ids,
                                       temperature)
    think_lp = jnp.where(think_mask, think_lp, 0.0)
    think_ent = jnp.where(think_mask, think_ent, 0.0)

    img_logits = janus.image_logits(params, config, hidden[:, p - 1:]).astype(jnp.float32)
    if use_uncond:
        img_logits = guided_logits(img_logits[:b], img_logits[b:], cfg_weight)
    image_lp, image_ent = _token_stats(img_logits, image_ids, image_temperature)
    return think_lp, image_lp, think_ent, image_ent


def sequence_logprobs(params, config, rollout, cfg_mode: str = "cfg", cfg_weight: float = 5.0,
                      uncond_hides: str = "prompt", *, temperature: float = 1.0,
                      image_temperature: float = 1.0):
    """Teacher-forced (think_logprobs [B, T], image_logprobs [B, N]); see the module docstring."""
    think_lp, image_lp, _, _ = sequence_logprobs_and_entropy(
        params, config, rollout, cfg_mode, cfg_weight, uncond_hides, temperature=temperature,
        image_temperature=image_temperature)
    return think_lp, image_lp
