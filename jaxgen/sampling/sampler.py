"""KV-cache sampler for reasoning-then-image generation with classifier-free guidance.

One jitted function per (config, options, input shapes) runs the whole rollout:

Phase 1 (options.max_think_tokens = T > 0): the conditional rows write a chain of thought, one
token per `lax.while_loop` step, sampled with temperature / top-k / top-p (or greedily). A row
stops when it samples `<begin_of_image>` or eos (the stop token is not part of the reasoning) or
after T tokens; the loop ends when every row has stopped. Rows decode in lockstep: a row that has
stopped keeps feeding (masked-out) filler tokens, so its later slots are simply invisible.

Phase 2: `<begin_of_image>` is forced and exactly config.num_image_tokens image tokens follow,
one per `lax.fori_loop` step. With CFG (cfg_weight != 1) the batch is [cond rows; uncond rows]
stacked like Hugging Face; the unconditional copy replaces every prompt token except BOS and
`<begin_of_image>` by pad (and the reasoning too when uncond_hides='prompt_and_reasoning'), keeping
the attention mask, and the image logits are u + w (c - u). Phase 2 starts with one prefill of
[prompt; reasoning; <begin_of_image>] for all rows, so its cache layout is exactly the layout
`scoring.sequence_logprobs` recomputes in one teacher-forced pass.

Sequence layout (slots) shared by sampler and scorer, per row:

    [prompt: L slots, left padded][reasoning: T slots, masked after the stop][boi][image: N]

Positions are contiguous per row over the unmasked slots (cumsum(mask) - 1), so rows whose prompts
or reasoning differ in length still decode in lockstep.

Log-prob convention (the scorer uses the same): a token's log-prob is log softmax(logits / temp)
of the full vocabulary, with temp = options.temperature for reasoning and
options.image_temperature for image tokens (applied after the CFG combination). Top-k / top-p
only restrict which token is drawn; they do not renormalise the reported log-prob. `greedy` takes
the argmax and reports the log-prob of it under the same tempered distribution.

The KV caches are created inside the jitted function and updated in place by the loops (XLA
reuses the loop-carried buffer), which is what donating them would buy across calls.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import PromptTooLongError, UserError
from jaxgen import parallel
from jaxgen.models import janus

UNCOND_HIDES = ("prompt", "prompt_and_reasoning")


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    """How to sample; frozen and hashable because it is a static argument of the jitted sampler."""
    max_think_tokens: int = 0  # 0: no chain of thought; <begin_of_image> forced at once
    temperature: float = 1.0  # reasoning tokens
    top_k: int = 0  # 0: no top-k restriction (reasoning tokens)
    top_p: float = 1.0  # 1.0: no nucleus restriction (reasoning tokens)
    greedy: bool = False  # argmax for reasoning and image tokens
    image_temperature: float = 1.0
    cfg_weight: float = 5.0  # 1.0 disables the unconditional pass
    uncond_hides: str = "prompt"  # or 'prompt_and_reasoning'

    def __post_init__(self):
        if self.max_think_tokens < 0:
            raise UserError(f"max_think_tokens must be >= 0, got {self.max_think_tokens}")
        if self.temperature <= 0 or self.image_temperature <= 0:
            raise UserError(
                f"temperatures must be > 0 (got temperature={self.temperature}, "
                f"image_temperature={self.image_temperature}); use greedy=True for argmax decoding")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p}")
        if self.uncond_hides not in UNCOND_HIDES:
            raise UserError(f"uncond_hides={self.uncond_hides!r} is unknown; use one of {UNCOND_HIDES}")

    @property
    def use_cfg(self) -> bool:
        return float(self.cfg_weight) != 1.0


@flax.struct.dataclass
class Rollout:
    """What one sampling call produced (a pytree of arrays; T = max_think_tokens, N image tokens)."""
    prompt_ids_bl: jax.Array  # int32 [B, L], left padded, ends before <begin_of_image>
    prompt_mask_bl: jax.Array  # bool [B, L]
    think_ids_bt: jax.Array  # int32 [B, T], pad after the stop
    think_mask_bt: jax.Array  # bool [B, T], True for generated reasoning tokens
    think_logprobs_bt: jax.Array  # f32 [B, T], 0 where think_mask is False
    image_ids_bn: jax.Array  # int32 [B, N]
    image_logprobs_bn: jax.Array  # f32 [B, N], of the guided, tempered distribution sampled from


# ---------------------------------------------------------------------------------------------
# Pieces shared with scoring.py (one definition of the sequence layout and the conventions).

def positions_from_mask(mask_bl):
    """Contiguous positions over the unmasked slots: clip(cumsum(mask) - 1, 0)."""
    return jnp.maximum(jnp.cumsum(mask_bl.astype(jnp.int32), axis=1) - 1, 0)


def prefix_ids_and_mask(config, prompt_ids_bl, prompt_mask_bl, think_ids_bt, think_mask_bt):
    """[prompt; reasoning; <begin_of_image>] ids and mask, [B, L + T + 1]."""
    b = prompt_ids_bl.shape[0]
    boi = jnp.full((b, 1), config.boi_token_id, jnp.int32)
    ids = jnp.concatenate([prompt_ids_bl.astype(jnp.int32), think_ids_bt.astype(jnp.int32), boi], 1)
    mask = jnp.concatenate([prompt_mask_bl.astype(bool), think_mask_bt.astype(bool),
                            jnp.ones((b, 1), bool)], 1)
    return ids, mask


def unconditional_ids(config, prefix_ids_bp, prompt_len: int, uncond_hides: str):
    """The CFG unconditional copy of [prompt; reasoning; boi] ids (attention mask unchanged).

    Every prompt token except BOS and <begin_of_image> becomes pad (as Hugging Face does); the
    reasoning slots are kept (uncond_hides='prompt') or padded too ('prompt_and_reasoning').
    """
    keep = (prefix_ids_bp == config.bos_token_id) | (prefix_ids_bp == config.boi_token_id)
    slot = jnp.arange(prefix_ids_bp.shape[1])[None, :]
    if uncond_hides == "prompt":
        keep = keep | ((slot >= prompt_len) & (slot < prefix_ids_bp.shape[1] - 1))
    elif uncond_hides != "prompt_and_reasoning":
        raise UserError(f"uncond_hides={uncond_hides!r} is unknown; use one of {UNCOND_HIDES}")
    return jnp.where(keep, prefix_ids_bp, config.pad_token_id).astype(jnp.int32)


def guided_logits(cond_logits, uncond_logits, cfg_weight: float):
    """Classifier-free guidance: u + w (c - u)."""
    return uncond_logits + cfg_weight * (cond_logits - uncond_logits)


def tempered_log_probs(logits, temperature: float):
    return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def filter_logits(logits_bv, top_k: int, top_p: float):
    """Set logits outside the top-k / nucleus (top-p) set to -inf (at least one token kept)."""
    vocab = logits_bv.shape[-1]
    if 0 < top_k < vocab:
        kth = jax.lax.top_k(logits_bv, top_k)[0][..., -1:]
        logits_bv = jnp.where(logits_bv < kth, -jnp.inf, logits_bv)
    if top_p < 1.0:
        sorted_desc = -jnp.sort(-logits_bv, axis=-1)
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        n_keep = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1, keepdims=True), 1)
        threshold = jnp.take_along_axis(sorted_desc, n_keep - 1, axis=-1)
        logits_bv = jnp.where(logits_bv < threshold, -jnp.inf, logits_bv)
    return logits_bv


def _pick(logits_bv, key, temperature, greedy, top_k=0, top_p=1.0):
    """Draw one token per row; returns (ids int32 [B], log-probs f32 [B]) per the convention."""
    logp_bv = tempered_log_probs(logits_bv, temperature)
    if greedy:
        tok_b = jnp.argmax(logits_bv, axis=-1)
    else:
        tok_b = jax.random.categorical(key, filter_logits(logp_bv, top_k, top_p), axis=-1)
    tok_b = tok_b.astype(jnp.int32)
    return tok_b, jnp.take_along_axis(logp_bv, tok_b[:, None], axis=-1)[:, 0]


def context_length(config, prompt_len: int, max_think_tokens: int) -> int:
    """Positions one rollout needs: prompt + reasoning budget + <begin_of_image> + image tokens."""
    return prompt_len + max_think_tokens + 1 + config.num_image_tokens


def check_context(config, prompt_len: int, max_think_tokens: int):
    """Raise PromptTooLongError when the rollout would not fit in the model's context."""
    need = context_length(config, prompt_len, max_think_tokens)
    limit = config.text.max_position_embeddings
    if need > limit:
        raise PromptTooLongError(
            f"prompt of {prompt_len} tokens + reasoning budget {max_think_tokens} + 1 "
            f"<begin_of_image> + {config.num_image_tokens} image tokens = {need} positions, more than "
            f"the model's context of {limit} (text.max_position_embeddings); shorten the prompt "
            f"or lower max_think_tokens to at most {max(limit - need + max_think_tokens, 0)}")


# ---------------------------------------------------------------------------------------------
# The two phases.

def think_phase(params, config, ids_bl, mask_bl, rng, options):
    """Chain of thought on the conditional rows: (ids [B,T], mask [B,T], log-probs [B,T])."""
    b, l = ids_bl.shape
    t_max = options.max_think_tokens
    cache_dtype = jnp.dtype(config.text.dtype)
    cache = janus.init_cache(config, b, l + t_max, cache_dtype)
    kv_bs = jnp.zeros((b, l + t_max), bool).at[:, :l].set(mask_bl)
    hidden, cache = janus.decode(params, config, janus.embed_text(params, config, ids_bl),
                                 positions_from_mask(mask_bl), kv_bs, cache, 0)
    logits_bv = janus.text_logits(params, config, hidden[:, -1:])[:, 0]
    prompt_len_b = jnp.sum(mask_bl, axis=1).astype(jnp.int32)

    def cond(state):
        t, done_b = state[0], state[4]
        return (t < t_max) & ~jnp.all(done_b)

    def body(state):
        t, cache, kv_bs, logits_bv, done_b, ids_bt, keep_bt, lp_bt = state
        tok_b, lp_b = _pick(logits_bv, jax.random.fold_in(rng, t), options.temperature,
                            options.greedy, options.top_k, options.top_p)
        stop_b = (tok_b == config.boi_token_id) | (tok_b == config.eos_token_id)
        keep_b = ~done_b & ~stop_b
        tok_b = jnp.where(keep_b, tok_b, config.pad_token_id)
        ids_bt = ids_bt.at[:, t].set(tok_b)
        keep_bt = keep_bt.at[:, t].set(keep_b)
        lp_bt = lp_bt.at[:, t].set(jnp.where(keep_b, lp_b, 0.0))
        kv_bs = kv_bs.at[:, l + t].set(keep_b)
        # A kept token sits right after the row's previous t kept tokens.
        hidden, cache = janus.decode(params, config, janus.embed_text(params, config, tok_b[:, None]),
                                     (prompt_len_b + t)[:, None], kv_bs, cache, l + t)
        logits_bv = janus.text_logits(params, config, hidden)[:, 0]
        return t + 1, cache, kv_bs, logits_bv, done_b | stop_b, ids_bt, keep_bt, lp_bt

    state = (jnp.int32(0), cache, kv_bs, logits_bv, jnp.zeros((b,), bool),
             jnp.full((b, t_max), config.pad_token_id, jnp.int32), jnp.zeros((b, t_max), bool),
             jnp.zeros((b, t_max), jnp.float32))
    state = jax.lax.while_loop(cond, body, state)
    return state[5], state[6], state[7]


def _image_phase(params, config, prefix_ids_bp, prefix_mask_bp, prompt_len, rng, options):
    """Image tokens after [prompt; reasoning; boi]: (ids int32 [B, N], log-probs f32 [B, N])."""
    b, p = prefix_ids_bp.shape
    n = config.num_image_tokens
    ids_rp, mask_rp = prefix_ids_bp, prefix_mask_bp
    if options.use_cfg:
        uncond_rp = unconditional_ids(config, prefix_ids_bp, prompt_len, options.uncond_hides)
        ids_rp = jnp.concatenate([prefix_ids_bp, uncond_rp], 0)
        mask_rp = jnp.concatenate([prefix_mask_bp, prefix_mask_bp], 0)
    rows = ids_rp.shape[0]
    max_len = p + n - 1  # the last image token is never fed back
    cache = janus.init_cache(config, rows, max_len, jnp.dtype(config.text.dtype))
    # Image slots are always visible; causality hides the ones not written yet.
    kv_rs = jnp.concatenate([mask_rp, jnp.ones((rows, n - 1), bool)], 1)
    pos_rp = positions_from_mask(mask_rp)
    hidden, cache = janus.decode(params, config, janus.embed_text(params, config, ids_rp), pos_rp,
                                 kv_rs, cache, 0)
    boi_pos_r = pos_rp[:, -1]

    def pick(hidden_r1d, i):
        logits_rv = janus.image_logits(params, config, hidden_r1d)[:, 0].astype(jnp.float32)
        if options.use_cfg:
            logits_rv = guided_logits(logits_rv[:b], logits_rv[b:], options.cfg_weight)
        return _pick(logits_rv, jax.random.fold_in(rng, i), options.image_temperature, options.greedy)

    tok_b, lp_b = pick(hidden[:, -1:], 0)
    ids_bn = jnp.zeros((b, n), jnp.int32).at[:, 0].set(tok_b)
    lp_bn = jnp.zeros((b, n), jnp.float32).at[:, 0].set(lp_b)

    def body(i, state):
        cache, tok_b, ids_bn, lp_bn = state
        feed_r = jnp.concatenate([tok_b, tok_b]) if options.use_cfg else tok_b
        emb = janus.embed_image_codes(params, config, feed_r[:, None],  # code i - 1
                                      jnp.full((rows, 1), i - 1, jnp.int32))
        hidden, cache = janus.decode(params, config, emb, (boi_pos_r + i)[:, None], kv_rs, cache,
                                     p + i - 1)
        tok_b, lp_b = pick(hidden, i)
        return cache, tok_b, ids_bn.at[:, i].set(tok_b), lp_bn.at[:, i].set(lp_b)

    _, _, ids_bn, lp_bn = jax.lax.fori_loop(1, n, body, (cache, tok_b, ids_bn, lp_bn))
    return ids_bn, lp_bn


def _sample_impl(params, input_ids_bl, attention_mask_bl, rng, config, options, activations):
    with parallel.activations_context(activations):
        return _sample_rows(params, input_ids_bl, attention_mask_bl, rng, config, options)


def _sample_rows(params, input_ids_bl, attention_mask_bl, rng, config, options):
    b, l = input_ids_bl.shape
    ids_bl = input_ids_bl.astype(jnp.int32)
    mask_bl = attention_mask_bl.astype(bool)
    rng_think, rng_image = jax.random.split(rng)
    t_max = options.max_think_tokens
    if t_max > 0:
        think_ids, think_mask, think_lp = think_phase(params, config, ids_bl, mask_bl, rng_think,
                                                       options)
    else:
        think_ids = jnp.zeros((b, 0), jnp.int32)
        think_mask = jnp.zeros((b, 0), bool)
        think_lp = jnp.zeros((b, 0), jnp.float32)
    prefix_ids, prefix_mask = prefix_ids_and_mask(config, ids_bl, mask_bl, think_ids, think_mask)
    image_ids, image_lp = _image_phase(params, config, prefix_ids, prefix_mask, l, rng_image, options)
    return Rollout(prompt_ids_bl=ids_bl, prompt_mask_bl=mask_bl, think_ids_bt=think_ids,
                   think_mask_bt=think_mask, think_logprobs_bt=think_lp, image_ids_bn=image_ids,
                   image_logprobs_bn=image_lp)


# One compiled executable per (config, options, activations, shapes); `_sample_jit._cache_size()`
# counts them.
_sample_jit = jax.jit(_sample_impl, static_argnames=("config", "options", "activations"))


def sample(params, config, input_ids_bl, attention_mask_bl, rng, options: SampleOptions = SampleOptions(),
           activations: tuple | None = None) -> Rollout:
    """Sample reasoning (optional) and image tokens for left-padded prompts.

    input_ids_bl / attention_mask_bl: [B, L], prompts ending with '<|Assistant|>:' (before
    <begin_of_image>); every row's last slot must be a real token (left padding).
    rng: a PRNG key; the same key, inputs and options give the same rollout.
    activations: (mesh, layout) to keep the activations split over the batch like the prompts
    (parallel.activation_sharding; a trainer's rollout on several devices), or None.
    """
    if not isinstance(options, SampleOptions):
        raise UserError(f"options must be a SampleOptions, got {type(options).__name__}")
    shape = np.shape(input_ids_bl)
    if len(shape) != 2 or np.shape(attention_mask_bl) != shape:
        raise UserError(f"input_ids and attention_mask must both be [batch, length]; got {shape} "
                        f"and {np.shape(attention_mask_bl)}")
    if shape[1] == 0:
        raise UserError("empty prompts: input_ids has length 0; pass at least the BOS token")
    if config.num_image_tokens < 1:
        raise UserError("config.num_image_tokens is 0; the VQ grid must have at least one token")
    check_context(config, shape[1], options.max_think_tokens)
    return _sample_jit(params, jnp.asarray(input_ids_bl), jnp.asarray(attention_mask_bl), rng,
                       config=config, options=options, activations=activations)


def compiled_count() -> int:
    """How many executables the sampler has compiled so far (one per config/options/shapes)."""
    return _sample_jit._cache_size()
