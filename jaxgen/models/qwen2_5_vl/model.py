"""Qwen2.5-VL as pure functions of a plain params pytree (`config` static under jit; image
grids static tuples ((t, h, w), ...) in patches, one per image, in the order of pixel_values).

Top-level param keys: 'visual' (vision.VisionTower), 'language_model' (text.TextModel) and
'lm_head' ({'kernel': [D, vocab]}, absent when config.tie_word_embeddings).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import parallel
from jaxgen.errors import UserError
from jaxgen.models import llama
from jaxgen.models.llama import stack_layers, unstack_layers
from jaxgen.models.qwen2_5_vl import text, vision
from jaxgen.models.qwen2_5_vl.config import Qwen2_5_VLConfig

LOGITS_AXES = ("activation_batch", "activation_length", "activation_vocab")


def _lm_head(config):
    t = config.text
    return nn.Dense(t.vocab_size, use_bias=False, dtype=jnp.dtype(t.dtype),
                    param_dtype=jnp.dtype(t.param_dtype),
                    kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                             ("embed", "vocab")))


def _boxed_params(config: Qwen2_5_VLConfig, rng):
    """nn.Partitioned-boxed params; the vision tower is initialised on one m x m grid (weights do
    not depend on the image size)."""
    k_vis, k_lm, k_head = jax.random.split(rng, 3)
    v, t = config.vision, config.text
    m = v.spatial_merge_size
    grid = ((1, m, m),)
    out = {"visual": dict(vision.VisionTower(v).init(
        k_vis, jnp.zeros((m * m, v.patch_dim)), vision.vision_plan(v, grid))["params"]),
        "language_model": dict(text.TextModel(t).init(
            k_lm, jnp.zeros((1, 1, t.hidden_size)), jnp.zeros((3, 1, 1), jnp.int32),
            jnp.ones((1, 1), bool))["params"])}
    if not config.tie_word_embeddings:
        out["lm_head"] = dict(_lm_head(config).init(k_head, jnp.zeros((1, t.hidden_size)))["params"])
    return out


@functools.partial(jax.jit, static_argnums=0)
def _init_params_jit(config, rng):
    return nn.meta.unbox(_boxed_params(config, rng))


def init_params(config: Qwen2_5_VLConfig, rng) -> dict:
    """Random parameters (plain pytree) in the layout the importer writes."""
    return _init_params_jit(config, rng)


def param_shapes(config: Qwen2_5_VLConfig) -> dict:
    """Pytree like params of jax.ShapeDtypeStruct (nothing allocated)."""
    return jax.eval_shape(lambda r: nn.meta.unbox(_boxed_params(config, r)),
                          jax.random.PRNGKey(0))


def param_logical_axes(config: Qwen2_5_VLConfig) -> dict:
    """Pytree like params whose leaves are tuples of logical axis names (jaxgen.parallel's)."""
    boxed = jax.eval_shape(lambda r: _boxed_params(config, r), jax.random.PRNGKey(0))
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
    return jax.tree_util.tree_map(
        lambda leaf: tuple(leaf.names) if is_box(leaf) else (None,) * leaf.ndim, boxed,
        is_leaf=is_box)


# ---------------------------------------------------------------------------------------------
# Execution options: the same weights run scanned or unrolled, rematerialised, in another dtype.

EXECUTION_OPTIONS = ("scan_layers", "remat_policy", "dtype", "param_dtype")


def with_execution_options(params, config: Qwen2_5_VLConfig, **options):
    """(params, config) running the same weights with other EXECUTION_OPTIONS: dtype and
    param_dtype apply to both towers, scan_layers / remat_policy to the language model."""
    unknown = sorted(set(options) - set(EXECUTION_OPTIONS))
    if unknown:
        raise UserError(f"unknown execution option(s) {unknown}; choose from {EXECUTION_OPTIONS}")
    text_cfg = dataclasses.replace(config.text, **options)
    vis_cfg = dataclasses.replace(config.vision, **{k: v for k, v in options.items()
                                                    if k in ("dtype", "param_dtype")})
    if text_cfg.scan_layers != config.text.scan_layers:
        convert = stack_layers if text_cfg.scan_layers else unstack_layers
        params = dict(params, language_model=convert(params["language_model"],
                                                     text_cfg.num_hidden_layers))
    if "param_dtype" in options:
        params = jax.tree_util.tree_map(lambda x: x.astype(options["param_dtype"]), params)
    return params, config.replace(text=text_cfg, vision=vis_cfg)


# ---------------------------------------------------------------------------------------------
# Forward pieces.

def image_features(params, config: Qwen2_5_VLConfig, pixel_values_nk, grid_thw):
    """pixel_values [sum(t*h*w), C*T*P*P] -> features [sum(t*h*w) / m^2, D], images in order
    (HF's `model.visual(pixel_values, grid_thw).pooler_output`). grid_thw: static."""
    plan = vision.vision_plan(config.vision, vision.normalize_grid(grid_thw))
    return vision.VisionTower(config.vision).apply({"params": params["visual"]},
                                                   pixel_values_nk, plan)


def embed_tokens(params, config: Qwen2_5_VLConfig, ids_bl):
    return text.TextModel(config.text).apply({"params": params["language_model"]}, ids_bl,
                                             method=text.TextModel.embed)


def merge_image_features(emb_bld, ids_bl, features_md, image_token_id: int):
    """HF's masked_scatter: the k-th image token of the batch (row-major) takes features[k].
    Counts must match (check_image_tokens); extra tokens would repeat the last feature."""
    is_img = ids_bl == image_token_id
    k = jnp.clip(jnp.cumsum(is_img.reshape(-1)) - 1, 0, features_md.shape[0] - 1)
    gathered = features_md[k].reshape(*ids_bl.shape, -1).astype(emb_bld.dtype)
    return jnp.where(is_img[..., None], gathered, emb_bld)


def rope_positions(config: Qwen2_5_VLConfig, ids_bl, mask_bl, grid_thw=()):
    """HF's `get_rope_index` for images, jit-able: (positions [3, B, L] int32, next [B]).

    Text tokens advance (t, h, w) together by one; an image's tokens take start + (frame, row,
    col) of its merged grid and the text after it starts at start + max(rows, cols). Padding
    (mask 0) gets position 0. `next` is the position of the first generated token (all three
    axes equal from then on). The image groups of the batch, read row-major, match grid_thw.
    """
    grid = np.asarray(vision.normalize_grid(grid_thw) or ((1, 1, 1),), np.int32)
    m = config.vision.spatial_merge_size
    gh, gw = grid[:, 1] // m, grid[:, 2] // m
    valid = mask_bl.astype(bool)
    is_img = (ids_bl == config.image_token_id) & valid
    first = is_img & ~jnp.pad(is_img[:, :-1], ((0, 0), (1, 0)))
    k = jnp.clip(jnp.cumsum(first.reshape(-1)).reshape(first.shape) - 1, 0, len(grid) - 1)
    rows, cols = jnp.asarray(gh)[k], jnp.asarray(gw)[k]
    step = jnp.where(valid & ~is_img, 1, 0) + jnp.where(first, jnp.maximum(rows, cols), 0)
    start = jnp.cumsum(step, axis=1) - step  # exclusive: positions used before this token
    idx = jnp.arange(ids_bl.shape[1])
    group_start = jnp.maximum(jax.lax.cummax(jnp.where(first, idx, -1), axis=1), 0)
    offset = idx - group_start
    t, r, c = offset // (rows * cols), (offset // cols) % rows, offset % cols
    # every token of an image counts from its first token's start
    start = jnp.where(is_img, jnp.take_along_axis(start, group_start, axis=1), start)
    pos = jnp.stack([jnp.where(is_img, start + t, start), jnp.where(is_img, start + r, start),
                     jnp.where(is_img, start + c, start)])
    pos = jnp.where(valid[None], pos, 0).astype(jnp.int32)
    return pos, pos.max(axis=(0, 2)) + 1


def check_image_tokens(config: Qwen2_5_VLConfig, ids_bl, grid_thw):
    """Host check (outside jit) that the image tokens match the grids: one contiguous run per
    image, in order, of t*h*w / m^2 tokens. UserError naming the mismatch otherwise."""
    ids = np.asarray(ids_bl).reshape(-1)  # row-major; a run never spans two rows in practice
    is_img = (ids == config.image_token_id).astype(np.int8)
    starts = np.flatnonzero(np.diff(np.concatenate([[0], is_img])) == 1)
    ends = np.flatnonzero(np.diff(np.concatenate([is_img, [0]])) == -1) + 1
    runs = (ends - starts).tolist()
    m2 = config.vision.merge_unit
    want = [t * h * w // m2 for t, h, w in vision.normalize_grid(grid_thw)]
    if runs != want:
        raise UserError(f"the prompt's image-token runs have lengths {runs} but the image grids "
                        f"{list(vision.normalize_grid(grid_thw))} need {want}: expand each image "
                        f"placeholder to t*h*w/{m2} image tokens, one run per image, in order")


def init_cache(config: Qwen2_5_VLConfig, batch: int, max_len: int, dtype=jnp.float32):
    """Zero KV cache of max_len slots (layouts: llama.init_cache)."""
    return llama.init_cache(config.text, batch, max_len, dtype)


def decode(params, config: Qwen2_5_VLConfig, emb_bld, positions_3bl, kv_mask_bs, cache=None,
           cache_index=0):
    """The language model on embeddings -> (final-normed hidden [B, L, D], cache).

    No cache: causal attention over the L inputs, keys masked by kv_mask_bs [B, L]. With cache:
    the inputs' K/V go to slots [cache_index, cache_index + L) and query i sees slots
    j <= cache_index + i with kv_mask_bs[:, j] (kv_mask_bs is [B, max_len])."""
    return text.TextModel(config.text).apply({"params": params["language_model"]}, emb_bld,
                                             positions_3bl, kv_mask_bs, cache, cache_index)


def logits(params, config: Qwen2_5_VLConfig, hidden_bld):
    """[B, L, vocab] from the tied embedding or the separate lm_head."""
    if config.tie_word_embeddings:
        out = text.TextModel(config.text).apply({"params": params["language_model"]},
                                                hidden_bld, method=text.TextModel.attend)
    else:
        out = _lm_head(config).apply({"params": params["lm_head"]}, hidden_bld)
    return parallel.constrain(out, LOGITS_AXES)


def prefill_inputs(params, config: Qwen2_5_VLConfig, ids_bl, mask_bl, pixel_values=None,
                   grid_thw=()):
    """(embeddings [B, L, D] with the image features scattered in, positions [3, B, L],
    next position [B])."""
    emb = embed_tokens(params, config, ids_bl)
    if grid_thw:
        feats = image_features(params, config, pixel_values, grid_thw)
        emb = merge_image_features(emb, ids_bl, feats, config.image_token_id)
    positions, next_pos = rope_positions(config, ids_bl, mask_bl, grid_thw)
    return emb, positions, next_pos


def forward(params, config: Qwen2_5_VLConfig, ids_bl, mask_bl, pixel_values=None, grid_thw=()):
    """Logits [B, L, vocab] of a (left- or right-padded) batch with its images, what HF's
    `Qwen2_5_VLForConditionalGeneration(input_ids, attention_mask, pixel_values,
    image_grid_thw, mm_token_type_ids).logits` computes at the unpadded positions."""
    emb, positions, _ = prefill_inputs(params, config, ids_bl, mask_bl, pixel_values, grid_thw)
    hidden, _ = decode(params, config, emb, positions, mask_bl.astype(bool))
    return logits(params, config, hidden)


@functools.partial(jax.jit, static_argnames=("config", "grid_thw", "max_new_tokens"))
def generate(params, config: Qwen2_5_VLConfig, ids_bl, mask_bl, pixel_values, rng,
             temperature=0.0, eos_ids=None, *, grid_thw=(), max_new_tokens: int = 16):
    """Tokens [B, max_new_tokens] continuing left-padded prompts, with a KV cache of
    L + max_new_tokens slots (static shapes). temperature 0: greedy; else softmax sampling at
    that temperature. After a row writes an end token (eos_ids [E] int32, traced; default
    config.eos_token_ids) it writes pad_token_id, as HF's generate does. Pass temperature and
    eos_ids the same way (positional, keyword or default) across calls: jit caches each
    calling form separately."""
    b, l = ids_bl.shape
    mask = mask_bl.astype(bool)
    emb, positions, next_pos = prefill_inputs(params, config, ids_bl, mask, pixel_values,
                                              grid_thw)
    cache = init_cache(config, b, l + max_new_tokens, jnp.dtype(config.text.dtype))
    kv_mask = jnp.concatenate([mask, jnp.zeros((b, max_new_tokens), bool)], axis=1)
    hidden, cache = decode(params, config, emb, positions, kv_mask, cache, 0)
    eos = jnp.asarray(config.eos_token_ids if eos_ids is None else eos_ids, jnp.int32)

    def pick(hidden_bd, key):
        lg = logits(params, config, hidden_bd[:, None])[:, 0].astype(jnp.float32)
        sampled = jax.random.categorical(key, lg / jnp.maximum(temperature, 1e-6), axis=-1)
        return jnp.where(temperature > 0, sampled, jnp.argmax(lg, axis=-1)).astype(jnp.int32)

    keys = jax.random.split(rng, max_new_tokens)
    tok = pick(hidden[:, -1], keys[0])
    out = jnp.zeros((b, max_new_tokens), jnp.int32).at[:, 0].set(tok)
    done = jnp.isin(tok, eos)

    def step(i, carry):  # feed token i-1 at slot l+i-1, pick token i
        cache, kv_mask, tok, done, out = carry
        kv_mask = kv_mask.at[:, l + i - 1].set(True)
        pos = jnp.broadcast_to((next_pos + i - 1)[None, :, None], (3, b, 1))
        emb = embed_tokens(params, config, tok[:, None])
        hidden, cache = decode(params, config, emb, pos, kv_mask, cache, l + i - 1)
        new = jnp.where(done, config.pad_token_id, pick(hidden[:, -1], keys[i]))
        return cache, kv_mask, new, done | jnp.isin(new, eos), out.at[:, i].set(new)

    carry = jax.lax.fori_loop(1, max_new_tokens, step, (cache, kv_mask, tok, done, out))
    return carry[-1]
