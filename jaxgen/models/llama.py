"""Llama decoder (the Janus-Pro language model) in Flax Linen.

RMSNorm, rotary position embedding in Hugging Face's rotate-half layout, grouped-query attention,
SwiGLU MLP, no biases. The KV cache is an explicit pytree, not a Flax 'cache' collection:

    cache = {'k': [layers, B, S, kv_heads, head_dim], 'v': same}

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
            # k_cache / v_cache hold every layer ([layers, B, S, KV, hd]). This layer writes its
            # keys/values at [cache_index, cache_index + L) of row `layer` in place and attends to
            # all S slots; slicing out and re-stacking per-layer caches would copy the whole cache
            # on every decoded token.
            start = (layer, 0, cache_index, 0, 0)
            k_cache = jax.lax.dynamic_update_slice(k_cache, k[None].astype(k_cache.dtype), start)
            v_cache = jax.lax.dynamic_update_slice(v_cache, v[None].astype(v_cache.dtype), start)
            k_all = jax.lax.dynamic_index_in_dim(k_cache, layer, 0, keepdims=False).astype(dtype)
            v_all = jax.lax.dynamic_index_in_dim(v_cache, layer, 0, keepdims=False).astype(dtype)
        else:
            k_all, v_all = k, v

        if k_cache is None and _use_cudnn(cfg.attention_impl, dtype):
            out = _cudnn_attention(q, k_all, v_all, mask_bls).reshape(b, l, h * hd)
        else:
            out = _xla_attention(q, k_all, v_all, mask_bls, dtype).reshape(b, l, h * hd)
        out = proj("o_proj", cfg.hidden_size, ("heads", "embed"))(out)
        return out, k_cache, v_cache


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
    index) -> (carry, None); the caches are the whole [layers, ...] arrays (or None), so a scan
    carries them and updates row `layer` in place instead of stacking per-layer outputs."""
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
        carry = (x, None, None) if cache is None else (x, cache["k"], cache["v"])
        if cfg.scan_layers:
            carry, _ = self.layers(carry, cos, sin, mask, cache_index,
                                   jnp.arange(cfg.num_hidden_layers))
        else:
            for i, layer in enumerate(self.layers):
                carry, _ = layer(carry, cos, sin, mask, cache_index, i)
        x, k_new, v_new = carry
        x = self.norm(x)
        new_cache = None if cache is None else {"k": k_new, "v": v_new}
        return x, new_cache


def cache_logical_axes():
    axes = ("layers", "activation_batch", "activation_length", "kv_heads", None)
    return {"k": axes, "v": axes}


def init_cache(config: LlamaConfig, batch: int, max_len: int, dtype=jnp.float32):
    """Zero KV cache, split over the batch like the activations (inside
    parallel.activation_sharding; the in-place updates keep that layout)."""
    shape = (config.num_hidden_layers, batch, max_len, config.num_key_value_heads, config.head_dim)
    return {k: parallel.constrain(jnp.zeros(shape, dtype), axes)
            for k, axes in cache_logical_axes().items()}
