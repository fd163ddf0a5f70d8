"""Qwen2.5-VL language model (a Qwen2 decoder with M-RoPE) in Flax Linen.

    TextModel(config).apply({'params': p}, emb_bld, positions_3bl, kv_mask_bs, cache,
                            cache_index) -> (final-normed hidden [B, L, D], cache)

GQA with biases on q/k/v (none on o), RMSNorm, SwiGLU. M-RoPE: each token has three positions
(temporal, height, width) [3, B, L]; the head_dim/2 rotary frequencies are split into
`mrope_section` runs that read the temporal, height and width position in turn (text tokens
have all three equal, so it is plain RoPE for them).

The KV cache has llama.py's layouts (`llama.init_cache` makes it): keys [B, KV, hd, S], values
[B, KV, S, hd], a tuple of per-layer arrays, or stacked [layers, ...] with config.scan_layers.

Parameter layout (`params` of `TextModel`):
    embed_tokens/embedding [vocab, D]; norm/scale [D]
    layers_{i}/... (or layers/... stacked with a leading 'layers' axis when scanned):
      self_attn/{q,k,v}_proj/kernel [D, H*hd | KV*hd], bias; self_attn/o_proj/kernel [H*hd, D]
      mlp/{gate,up}_proj/kernel [D, I]; mlp/down_proj/kernel [I, D]
      input_layernorm/scale, post_attention_layernorm/scale
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import parallel
from jaxgen.models import llama
from jaxgen.models.qwen2_5_vl.config import TextConfig


def dense(features, axes, dtype, pdtype, name, use_bias=False):
    """nn.Dense with logical axes on its kernel (and bias)."""
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=pdtype, name=name,
                    kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]))


def activation(name: str):
    """The activation a Hugging Face config names."""
    return {"silu": nn.silu, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
            "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
            "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x)}[name]


def mrope_cos_sin(positions_3bl, cfg: TextConfig, dtype):
    """cos/sin [B, L, head_dim]: frequency run i of mrope_section reads position axis i % 3
    (HF's recomposition), then the head_dim/2 frequencies are repeated (rotate-half layout)."""
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    freqs = positions_3bl.astype(jnp.float32)[..., None] * inv_freq  # [3, B, L, hd/2]
    bounds = np.concatenate([[0], np.cumsum(cfg.mrope_section)])
    freqs = jnp.concatenate([freqs[i % 3, ..., bounds[i]:bounds[i + 1]]
                             for i in range(len(cfg.mrope_section))], axis=-1)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def attend(q_blhd, k_bkds, v_bksd, mask_bls, dtype):
    """Attention against keys [B, KV, hd, S] and values [B, KV, S, hd] (the cache layouts);
    softmax in float32; each KV head serves its group of query heads. -> [B, L, H, hd]."""
    b, l, h, hd = q_blhd.shape
    kv = k_bkds.shape[1]
    g = h // kv
    q = q_blhd.reshape(b, l, kv, g, hd)
    scores = jnp.einsum("blkgd,bkds->bkgls", q, k_bkds).astype(jnp.float32) * (hd ** -0.5)
    scores = jnp.where(mask_bls[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    return jnp.einsum("bkgls,bksd->blkgd", probs, v_bksd).reshape(b, l, h, hd)


class Attention(nn.Module):
    config: TextConfig

    @nn.compact
    def __call__(self, x_bld, cos, sin, mask_bls, k_cache, v_cache, cache_index, layer):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        h, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        b, l, _ = x_bld.shape
        q = dense(h * hd, ("embed", "heads"), dtype, pdtype, "q_proj", True)(x_bld)
        k = dense(kv * hd, ("embed", "kv_heads"), dtype, pdtype, "k_proj", True)(x_bld)
        v = dense(kv * hd, ("embed", "kv_heads"), dtype, pdtype, "v_proj", True)(x_bld)
        q = llama.apply_rope(q.reshape(b, l, h, hd), cos, sin)
        k = llama.apply_rope(k.reshape(b, l, kv, hd), cos, sin)
        k_new, v_new = k.transpose(0, 2, 3, 1), v.reshape(b, l, kv, hd).transpose(0, 2, 1, 3)
        if k_cache is None:
            k_all, v_all = k_new, v_new
        else:  # janus's cache layout (llama.write_kv_cache)
            k_cache, v_cache, k_all, v_all = llama.write_kv_cache(k_cache, v_cache, k_new, v_new,
                                                                  layer, cache_index)
        out = attend(q, k_all.astype(dtype), v_all.astype(dtype), mask_bls, dtype)
        out = dense(cfg.hidden_size, ("heads", "embed"), dtype, pdtype, "o_proj")(
            out.reshape(b, l, h * hd))
        return out, k_cache, v_cache


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)), the SwiGLU MLP of the text and vision blocks."""
    hidden_size: int
    intermediate_size: int
    act: str
    use_bias: bool
    dtype: str
    param_dtype: str

    @nn.compact
    def __call__(self, x):
        dtype, pdtype, bias = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype), self.use_bias
        gate = dense(self.intermediate_size, ("embed", "mlp"), dtype, pdtype, "gate_proj", bias)(x)
        up = dense(self.intermediate_size, ("embed", "mlp"), dtype, pdtype, "up_proj", bias)(x)
        return dense(self.hidden_size, ("mlp", "embed"), dtype, pdtype, "down_proj", bias)(
            activation(self.act)(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-norm block with nn.scan's signature: (carry (x, k_cache, v_cache), broadcasts...,
    layer index) -> (carry, None), as llama.DecoderLayer."""
    config: TextConfig

    @nn.compact
    def __call__(self, carry, cos, sin, mask_bls, cache_index, layer):
        x_bld, k_cache, v_cache = carry
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        norm = lambda name: llama.RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name=name)
        x_bld = parallel.constrain(x_bld, llama.ACT_BLD)
        attn_out, k_cache, v_cache = Attention(cfg, name="self_attn")(
            norm("input_layernorm")(x_bld), cos, sin, mask_bls, k_cache, v_cache, cache_index,
            layer)
        x_bld = x_bld + attn_out
        mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, "silu", False, cfg.dtype,
                       cfg.param_dtype, name="mlp")
        x_bld = x_bld + mlp(norm("post_attention_layernorm")(x_bld))
        return (parallel.constrain(x_bld, llama.ACT_BLD), k_cache, v_cache), None


def _layer_class(cfg: TextConfig):
    if cfg.remat_policy == "none":
        return DecoderLayer
    return nn.remat(DecoderLayer, policy=llama.REMAT_POLICIES[cfg.remat_policy],
                    prevent_cse=not cfg.scan_layers)


class TextModel(nn.Module):
    """Embedding table + decoder layers + final norm. `embed` and `__call__` are separate entry
    points because image features replace some embeddings in between; `attend` is the tied
    head (hidden @ embedding^T)."""
    config: TextConfig

    def setup(self):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.embed_tokens = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=pdtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                        ("vocab", "embed")))
        layer_cls = _layer_class(cfg)
        if cfg.scan_layers:
            self.layers = nn.scan(
                layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, 0),
                length=cfg.num_hidden_layers, metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, name="layers")
        else:
            self.layers = [layer_cls(cfg, name=f"layers_{i}")
                           for i in range(cfg.num_hidden_layers)]
        self.norm = llama.RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="norm")

    def embed(self, ids_bl):
        return self.embed_tokens(ids_bl)

    def attend(self, hidden_bld):
        return self.embed_tokens.attend(hidden_bld)

    def __call__(self, emb_bld, positions_3bl, kv_mask_bs, cache=None, cache_index=0):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        if self.is_initializing():
            self.embed_tokens(jnp.zeros((1, 1), jnp.int32))  # create the table __call__ skips
        x = emb_bld.astype(dtype)
        cos, sin = mrope_cos_sin(positions_3bl, cfg, dtype)
        mask = llama.attention_mask(kv_mask_bs, x.shape[1], cache_index)
        x, new_cache = llama.run_layers(self.layers, cfg.scan_layers, cfg.num_hidden_layers, x,
                                        cos, sin, mask, cache, cache_index)
        return self.norm(x), new_cache
