"""SigLIP-style ViT of the understanding path, computing what HF's `JanusVisionModel` computes.

    VisionTower(config).apply({'params': p}, pixels_bhwc) -> hidden [B, N, hidden_size]

Input: float32 NHWC pixels already normalised the way HF's `pixel_values` are (the processor
rescales to [0, 1] then normalises with the checkpoint's image_mean/std; Janus-Pro's
preprocessor uses mean = std = 0.5, i.e. pixels in [-1, 1]). H = W = config.image_size (HF's
position-embedding interpolation is not implemented). N = (image_size / patch_size)^2 patches in
row-major order, no class token.

Output: `last_hidden_state` AFTER post_layernorm, which is what `JanusModel.get_image_features`
feeds to the aligner (the aligner MLP itself lives in janus.py).

Per layer (pre-norm): x + attn(LN1(x)); x + MLP(LN2(x)); attention has biases on q/k/v when
config.attention_bias and always on the output `projection_layer`; MLP is fc1 -> exact (erf) GELU
(HF `hidden_act="gelu"`) -> fc2 with width hidden_size * mlp_ratio.

`use_qk_norm=True`: LayerNorm over the full hidden width (HF's parameters have that shape, torch's
default eps) on q and k before the head split. NOTE: HF's own forward cannot run this option (it
applies LayerNorm(hidden) to [.., heads, head_dim]), so there is no reference to check it against.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxgen import parallel
from jaxgen.errors import UserError
from jaxgen.models.config import VisionConfig
from jaxgen.models.llama import ACT_BLD

# torch.nn.LayerNorm's default epsilon, used by HF for the optional q/k norms.
QK_NORM_EPS = 1e-5


def _dense(features, axes, dtype, name, use_bias=True):
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
        name=name)


def _layer_norm(eps, dtype, name):
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
        name=name)


def _conv(features, kernel, stride, padding, dtype, name):
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=padding, dtype=dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                 (None, None, None, "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name)


def conv_stem_widths(cfg: VisionConfig) -> list:
    """Output widths of the 'conv' stem's log2(patch_size) stride-2 convolutions: doubling and
    ending at hidden_size (patch 8, hidden 128 -> [32, 64, 128])."""
    n = cfg.patch_size.bit_length() - 1
    return [max(cfg.hidden_size >> (n - 1 - i), 1) for i in range(n)]


class VisionEmbeddings(nn.Module):
    """Patch tokens + learned absolute position embedding. stem 'patch': one conv with kernel =
    stride = patch (SigLIP); 'conv': stride-2 3x3 convolutions with GELU between them."""
    config: VisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixels_bhwc):
        cfg = self.config
        x = pixels_bhwc.astype(self.dtype)
        if cfg.stem == "conv":
            widths = conv_stem_widths(cfg)
            for i, width in enumerate(widths):
                x = _conv(width, 3, 2, ((1, 1), (1, 1)), self.dtype, f"stem_{i}")(x)
                if i < len(widths) - 1:
                    x = jax.nn.gelu(x, approximate=False)
            patches = x
        else:
            p = cfg.patch_size
            patches = _conv(cfg.hidden_size, p, p, "VALID", self.dtype, "patch_embedding")(x)
        b, gh, gw, d = patches.shape
        pos = nn.Embed(
            cfg.num_image_tokens, cfg.hidden_size, dtype=self.dtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
            name="position_embedding")
        return patches.reshape(b, gh * gw, d) + pos.embedding[None].astype(self.dtype)


class VisionAttention(nn.Module):
    """Bidirectional multi-head self-attention, softmax in float32."""
    config: VisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_bld):
        cfg = self.config
        b, l, d = x_bld.shape
        heads = cfg.num_attention_heads
        head_dim = d // heads
        q = _dense(d, ("embed", "heads"), self.dtype, "q_proj", cfg.attention_bias)(x_bld)
        k = _dense(d, ("embed", "heads"), self.dtype, "k_proj", cfg.attention_bias)(x_bld)
        v = _dense(d, ("embed", "heads"), self.dtype, "v_proj", cfg.attention_bias)(x_bld)
        if cfg.use_qk_norm:
            q = _layer_norm(QK_NORM_EPS, self.dtype, "q_norm")(q)
            k = _layer_norm(QK_NORM_EPS, self.dtype, "k_norm")(k)
        q, k, v = (t.reshape(b, l, heads, head_dim) for t in (q, k, v))
        logits_bhqk = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (head_dim ** -0.5)
        weights = jax.nn.softmax(logits_bhqk.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, l, d)
        return _dense(d, ("heads", "embed"), self.dtype, "projection_layer")(out)


class VisionMLP(nn.Module):
    config: VisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_bld):
        cfg = self.config
        width = int(cfg.hidden_size * cfg.mlp_ratio)
        h = _dense(width, ("embed", "mlp"), self.dtype, "fc1")(x_bld)
        h = jax.nn.gelu(h, approximate=False)  # HF hidden_act "gelu" is the exact erf form
        return _dense(cfg.hidden_size, ("mlp", "embed"), self.dtype, "fc2")(h)


class VisionEncoderLayer(nn.Module):
    config: VisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_bld):
        eps = self.config.layer_norm_eps
        x_bld = x_bld + VisionAttention(self.config, self.dtype, name="self_attn")(
            _layer_norm(eps, self.dtype, "layer_norm1")(x_bld))
        return x_bld + VisionMLP(self.config, self.dtype, name="mlp")(
            _layer_norm(eps, self.dtype, "layer_norm2")(x_bld))


class VisionEncoder(nn.Module):
    config: VisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_bld):
        for i in range(self.config.num_hidden_layers):
            x_bld = VisionEncoderLayer(self.config, self.dtype, name=f"layers_{i}")(x_bld)
            # split over the batch like the LLM's activations (inside parallel.activation_sharding)
            x_bld = parallel.constrain(x_bld, ACT_BLD)
        return x_bld


class VisionTower(nn.Module):
    """pixels [B, H, W, C] (HF-normalised, see module doc) -> [B, N, hidden_size].

    Param tree (mirrors HF): embeddings/{patch_embedding (stem 'patch') or stem_i (stem 'conv'),
    position_embedding},
    encoder/layers_i/{layer_norm1, self_attn/{q,k,v}_proj, projection_layer, layer_norm2,
    mlp/{fc1, fc2}}, post_layernorm.
    """
    config: VisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixels_bhwc):
        cfg = self.config
        expected = (cfg.image_size, cfg.image_size, cfg.num_channels)
        if tuple(pixels_bhwc.shape[1:]) != expected:
            raise UserError(
                f"vision tower expects pixels [B, {expected[0]}, {expected[1]}, {expected[2]}] "
                f"(NHWC), got {tuple(pixels_bhwc.shape)}; resize images to vision.image_size.")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise UserError(f"vision.hidden_size={cfg.hidden_size} is not divisible by "
                            f"vision.num_attention_heads={cfg.num_attention_heads}; fix the config.")
        h = VisionEmbeddings(cfg, self.dtype, name="embeddings")(pixels_bhwc)
        h = VisionEncoder(cfg, self.dtype, name="encoder")(h)
        return _layer_norm(cfg.layer_norm_eps, self.dtype, "post_layernorm")(h)
