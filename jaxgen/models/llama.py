"""Llama decoder (the Janus-Pro language model) in Flax Linen.

RMSNorm, rotary position embedding in Hugging Face's rotate-half layout, grouped-query attention,
SwiGLU MLP, no biases. The KV cache is an explicit pytree, not a Flax 'cache' collection:

    cache = {'k': keys [B, kv_heads, head_dim, S], 'v': values [B, kv_heads, S, head_dim]}

one array per layer in a tuple (unrolled layers), or stacked with a leading 'layers' axis
(config.scan_layers), in the layouts the attention matmuls read without copying.

Parameter layout (`params` of `LlamaModel`):

    embed_tokens/embedding [vocab, D]
    layers_{i}/...          unrolled (config.scan_layers False), or
    layers/...              stacked with a leading 'layers' axis (config.scan_layers True)
    norm/scale [D]

Each layer: self_attn/{q,k,v,o}_proj/kernel ([D, H*hd], [D, KV*hd], [D, KV*hd], [H*hd, D]),
mlp/{gate,up,down}_proj/kernel, input_layernorm/scale, post_attention_layernorm/scale.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen import parallel
from jaxgen.models.config import ConfigError, LlamaConfig

def _dots_and_attention_saveable(prim, *args, **params) -> bool:
    """checkpoint_dots, plus the cuDNN flash-attention forward (its output and softmax
    statistics): a custom call, not a dot, so checkpoint_dots would run it again in the
    backward pass. XLA attention is einsums, which checkpoint_dots already keeps."""
    return (jax.checkpoint_policies.checkpoint_dots(prim, *args, **params)
            or prim.name == "dot_product_attention_fwd_wrapper")


REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    "dots_saveable": jax.checkpoint_policies.checkpoint_dots,
    "dots_attention_saveable": _dots_and_attention_saveable,
}

ACT_BLD = ("activation_batch", "activation_length", "activation_embed")


def _dtype(name: str):
    return jnp.dtype(name)


def _kernel_init(axes):
    return nn.with_logical_partitioning(nn.initializers.normal(0.02), axes)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * scale, computed in float32 as Hugging Face does."""
    eps: float
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                           (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        normed = (x32 * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
        return scale.astype(self.dtype) * normed


def rope_cos_sin(positions_bl, head_dim: int, theta: float, dtype):
    """cos/sin tables [B, L, head_dim] for the rotate-half layout (frequencies repeated twice)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions_bl.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x_blhd, cos_bld, sin_bld):
    cos = cos_bld[:, :, None, :]
    sin = sin_bld[:, :, None, :]
    return x_blhd * cos + _rotate_half(x_blhd) * sin


def attention_mask(kv_mask_bs, query_len: int, cache_index, segment_ids_bl=None):
    """Boolean [B, L, S]: query i (at slot cache_index + i) sees slot j <= its own, if kv_mask.

    segment_ids_bl (no cache, S == L): packed rows; a query sees only keys of its own segment.
    A mask of None (LlamaModel's causal_only) stands for the plain causal mask.
    """
    s = kv_mask_bs.shape[1]
    q_slot = cache_index + jnp.arange(query_len)[:, None]
    causal_ls = jnp.arange(s)[None, :] <= q_slot
    mask = causal_ls[None] & kv_mask_bs.astype(bool)[:, None, :]
    if segment_ids_bl is not None:
        mask &= segment_ids_bl[:, :, None] == segment_ids_bl[:, None, :]
    return mask


class Attention(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x_bld, cos, sin, mask_bls, k_cache, v_cache, cache_index, layer):
        cfg = self.config
        dtype, pdtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        h, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        b, l, _ = x_bld.shape

        def proj(name, features, axes):
            return nn.Dense(features, use_bias=False, dtype=dtype, param_dtype=pdtype,
                            kernel_init=_kernel_init(axes), name=name)

        q = proj("q_proj", h * hd, ("embed", "heads"))(x_bld).reshape(b, l, h, hd)
        k = proj("k_proj", kv * hd, ("embed", "kv_heads"))(x_bld).reshape(b, l, kv, hd)
        v = proj("v_proj", kv * hd, ("embed", "kv_heads"))(x_bld).reshape(b, l, kv, hd)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)

        if k_cache is not None:
            # Keys [B, KV, hd, S] and values [B, KV, S, hd]: the layouts the two attention
            # matmuls read in place, so a decoded token copies no cache. The L new slots are
            # written at cache_index in place. Scanned layers carry every layer's cache stacked
            # ([layers, ...], this layer's row `layer`); unrolled layers get their own arrays,
            # so no layer is sliced out (a copy of its whole cache per token).
            k_new, v_new = k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)
            k_cache, v_cache, k_all, v_all = write_kv_cache(k_cache, v_cache, k_new, v_new,
                                                            layer, cache_index)
            out = _cached_attention(q, k_all.astype(dtype), v_all.astype(dtype), mask_bls,
                                    dtype).reshape(b, l, h * hd)
        elif _use_cudnn(cfg.attention_impl, dtype):
            out = _cudnn_attention(q, k, v, mask_bls).reshape(b, l, h * hd)
        else:
            out = _xla_attention(q, k, v, mask_bls, dtype).reshape(b, l, h * hd)
        out = proj("o_proj", cfg.hidden_size, ("heads", "embed"))(out)
        return out, k_cache, v_cache


def run_layers(layers, scan_layers: bool, num_layers: int, x, cos, sin, mask, cache, cache_index):
    """Run a decoder stack: one nn.scan'd module (scan_layers) or a list of layers, each
    (carry (x, k_cache, v_cache), cos, sin, mask, cache_index, layer) -> (carry, None).
    Returns (x, the new cache {'k', 'v'} or None)."""
    if scan_layers:
        carry = (x, None, None) if cache is None else (x, cache["k"], cache["v"])
        (x, k_new, v_new), _ = layers(carry, cos, sin, mask, cache_index, jnp.arange(num_layers))
    else:
        k_new, v_new = [], []
        for i, layer in enumerate(layers):
            carry = (x, None, None) if cache is None else (x, cache["k"][i], cache["v"][i])
            (x, k_i, v_i), _ = layer(carry, cos, sin, mask, cache_index, i)
            k_new.append(k_i)
            v_new.append(v_i)
        k_new, v_new = tuple(k_new), tuple(v_new)
    return x, None if cache is None else {"k": k_new, "v": v_new}


def write_kv_cache(k_cache, v_cache, k_new, v_new, layer, cache_index):
    """Write L new keys [B, KV, hd, L] and values [B, KV, L, hd] at cache_index, in place.

    Caches are [B, KV, hd, S] / [B, KV, S, hd], or with a leading [layers] axis for scanned
    layers (this layer's row `layer`). Returns (k_cache, v_cache, this layer's keys, values)."""
    if k_cache.ndim == 5:
        k_cache = jax.lax.dynamic_update_slice(
            k_cache, k_new[None].astype(k_cache.dtype), (layer, 0, 0, 0, cache_index))
        v_cache = jax.lax.dynamic_update_slice(
            v_cache, v_new[None].astype(v_cache.dtype), (layer, 0, 0, cache_index, 0))
        k_all = jax.lax.dynamic_index_in_dim(k_cache, layer, 0, keepdims=False)
        v_all = jax.lax.dynamic_index_in_dim(v_cache, layer, 0, keepdims=False)
        return k_cache, v_cache, k_all, v_all
    k_cache = jax.lax.dynamic_update_slice(k_cache, k_new.astype(k_cache.dtype),
                                           (0, 0, 0, cache_index))
    v_cache = jax.lax.dynamic_update_slice(v_cache, v_new.astype(v_cache.dtype),
                                           (0, 0, cache_index, 0))
    return k_cache, v_cache, k_cache, v_cache


def stack_layers(lm: dict, n_layers: int) -> dict:
    """Language-model params with layers_0..layers_{n-1} stacked into one scanned `layers`."""
    lm = dict(lm)
    layers = [lm.pop(f"layers_{i}") for i in range(n_layers)]
    lm["layers"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
    return lm


def unstack_layers(lm: dict, n_layers: int) -> dict:
    """The inverse of `stack_layers`."""
    lm = dict(lm)
    stacked = lm.pop("layers")
    for i in range(n_layers):
        lm[f"layers_{i}"] = jax.tree_util.tree_map(lambda x: x[i], stacked)
    return lm


def _use_cudnn(impl: str, dtype) -> bool:
    if impl == "xla":
        return False
    usable = jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    if impl == "cudnn" and not usable:
        raise ConfigError("text.attention_impl='cudnn' needs a GPU and text.dtype bfloat16 or "
                          f"float16 (backend {jax.default_backend()}, dtype {jnp.dtype(dtype)}); "
                          "use 'auto' to fall back to 'xla' elsewhere")
    return usable


def _xla_attention(q_blhd, k_bskd, v_bskd, mask_bls, dtype):
    """Softmax in float32; GQA by grouping the query heads of each kv head. -> [B, L, H, hd].
    mask_bls None: causal (query i sees keys j <= i)."""
    b, l, h, hd = q_blhd.shape
    kv = k_bskd.shape[2]
    if mask_bls is None:
        mask_bls = jnp.tril(jnp.ones((l, k_bskd.shape[1]), bool))[None]
    q = q_blhd.reshape(b, l, kv, h // kv, hd)
    scores = jnp.einsum("blkgd,bskd->bkgls", q, k_bskd).astype(jnp.float32) * (hd ** -0.5)
    scores = jnp.where(mask_bls[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    return jnp.einsum("bkgls,bskd->blkgd", probs, v_bskd).reshape(b, l, h, hd)


def _cached_attention(q_blhd, k_bkds, v_bksd, mask_bls, dtype):
    """_xla_attention against the cache layouts (keys [B, KV, hd, S], values [B, KV, S, hd]).
    The queries come first in both dots, as XLA's CPU matmul library takes them without
    copying either operand (M = the g * L query rows of each kv head)."""
    b, l, h, hd = q_blhd.shape
    kv = k_bkds.shape[1]
    g = h // kv
    q_bkmd = q_blhd.reshape(b, l, kv, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * l, hd)
    batch = ((0, 1), (0, 1))
    scores = jax.lax.dot_general(q_bkmd, k_bkds, (((3,), (2,)), batch)).astype(jnp.float32)
    scores = scores.reshape(b, kv, g, l, -1) * (hd ** -0.5)
    scores = jnp.where(mask_bls[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype).reshape(b, kv, g * l, -1)
    out_bkmd = jax.lax.dot_general(probs, v_bksd, (((3,), (2,)), batch))
    return out_bkmd.reshape(b, kv, g, l, hd).transpose(0, 3, 1, 2, 4).reshape(b, l, h, hd)


def _cudnn_attention(q_blhd, k_bskd, v_bskd, mask_bls):
    """cuDNN fused (flash) attention of a full causal sequence -> [B, L, H, hd].

    is_causal lets cuDNN skip the key blocks above the diagonal (half the work). A boolean mask
    (padding, packed segments) rides along as an additive bias shared by the heads; cuDNN then
    also computes the bias gradient (~15% of the attention backward on Janus-Pro-1B shapes), so
    callers whose rows are plain causal pass mask_bls=None (LlamaModel's causal_only)."""
    bias = None if mask_bls is None else \
        jnp.where(mask_bls, 0.0, -1e9).astype(q_blhd.dtype)[:, None]
    return jax.nn.dot_product_attention(q_blhd, k_bskd, v_bskd, bias=bias, is_causal=True,
                                        implementation="cudnn")


class MLP(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dtype, pdtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)

        def proj(name, features, axes):
            return nn.Dense(features, use_bias=False, dtype=dtype, param_dtype=pdtype,
                            kernel_init=_kernel_init(axes), name=name)

        gate = proj("gate_proj", cfg.intermediate_size, ("embed", "mlp"))(x)
        up = proj("up_proj", cfg.intermediate_size, ("embed", "mlp"))(x)
        return proj("down_proj", cfg.hidden_size, ("mlp", "embed"))(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-norm block. Signature fits nn.scan: (carry (x, k_cache, v_cache), broadcast..., layer
    index) -> (carry, None). Scanned, the caches are the whole [layers, ...] arrays (or None), so
    the scan carries them and updates row `layer` in place instead of stacking per-layer outputs;
    unrolled, they are this layer's own arrays."""
    config: LlamaConfig

    @nn.compact
    def __call__(self, carry, cos, sin, mask_bls, cache_index, layer):
        x_bld, k_cache, v_cache = carry
        cfg = self.config
        dtype, pdtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        norm = lambda name: RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name=name)
        x_bld = parallel.constrain(x_bld, ACT_BLD)
        attn_out, k_cache, v_cache = Attention(cfg, name="self_attn")(
            norm("input_layernorm")(x_bld), cos, sin, mask_bls, k_cache, v_cache, cache_index,
            layer)
        x_bld = x_bld + attn_out
        x_bld = x_bld + MLP(cfg, name="mlp")(norm("post_attention_layernorm")(x_bld))
        x_bld = parallel.constrain(x_bld, ACT_BLD)
        return (x_bld, k_cache, v_cache), None


def _layer_class(cfg: LlamaConfig):
    if cfg.remat_policy == "none":
        return DecoderLayer
    if cfg.remat_policy not in REMAT_POLICIES:
        raise ConfigError(f"text.remat_policy {cfg.remat_policy!r} is unknown; use one of "
                          f"{['none', *REMAT_POLICIES]}")
    return nn.remat(DecoderLayer, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)


class LlamaModel(nn.Module):
    """Embedding table + decoder layers + final norm. `embed` and `__call__` are separate entry
    points because Janus feeds the decoder with image embeddings too."""
    config: LlamaConfig

    def setup(self):
        cfg = self.config
        dtype, pdtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        self.embed_tokens = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=pdtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))
        layer_cls = _layer_class(cfg)
        if cfg.scan_layers:
            self.layers = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, 0),
                length=cfg.num_hidden_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, name="layers")
        else:
            self.layers = [layer_cls(cfg, name=f"layers_{i}") for i in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="norm")

    def embed(self, ids_bl):
        return self.embed_tokens(ids_bl)

    def __call__(self, emb_bld, positions_bl, kv_mask_bs, cache=None, cache_index=0,
                 segment_ids_bl=None, causal_only: bool = False):
        """Returns (final-normed hidden [B, L, D], updated cache or None). See `decode` in janus.py."""
        cfg = self.config
        dtype = _dtype(cfg.dtype)
        if self.is_initializing():
            self.embed_tokens(jnp.zeros((1, 1), jnp.int32))  # create the table, which __call__ skips
        x = emb_bld.astype(dtype)
        cos, sin = rope_cos_sin(positions_bl, cfg.head_dim, cfg.rope_theta, dtype)
        mask = None if causal_only else attention_mask(kv_mask_bs, x.shape[1], cache_index,
                                                       segment_ids_bl)
        x, new_cache = run_layers(self.layers, cfg.scan_layers, cfg.num_hidden_layers, x, cos,
                                  sin, mask, cache, cache_index)
        return self.norm(x), new_cache


def cache_logical_axes():
    """Axes of one layer's cache arrays (init_cache prepends 'layers' when they are stacked)."""
    return {"k": ("activation_batch", "kv_heads", None, "activation_length"),
            "v": ("activation_batch", "kv_heads", "activation_length", None)}


def cache_length(cache) -> int:
    """Slots of a cache made by init_cache."""
    v = cache["v"]
    return (v[0] if isinstance(v, (tuple, list)) else v).shape[-2]


def init_cache(config: LlamaConfig, batch: int, max_len: int, dtype=jnp.float32):
    """Zero KV cache {'k': keys [B, KV, hd, S], 'v': values [B, KV, S, hd]}: one array per layer
    in a tuple (unrolled layers) or stacked [layers, ...] (config.scan_layers). Split over the
    batch like the activations (inside parallel.activation_sharding; the in-place updates keep
    that layout)."""
    kv, hd, n = config.num_key_value_heads, config.head_dim, config.num_hidden_layers
    shapes = {"k": (batch, kv, hd, max_len), "v": (batch, kv, max_len, hd)}
    cache = {}
    for name, axes in cache_logical_axes().items():
        if config.scan_layers:
            cache[name] = parallel.constrain(jnp.zeros((n, *shapes[name]), dtype),
                                             ("layers", *axes))
        else:
            cache[name] = tuple(parallel.constrain(jnp.zeros(shapes[name], dtype), axes)
                                for _ in range(n))
    return cache
