"""LlamaGen-style VQ image tokenizer, computing what HF's `JanusVQVAE` computes.

Layout: NHWC inside JAX (HF is NCHW; conversion happens in jaxgen/convert/hf_vision_vq.py).
Pixels are float32 in [-1, 1]. Codes are int32 `[B, N]`, N = (H / downsample) * (W / downsample),
row-major over the latent grid (same order as HF's `image_tokens`).

    encode_continuous(pixels_bhwc) -> z_bhwd        encoder + quant_conv (before quantization)
    quantize(z_bhwd) -> (zq_bhwd, codes_bn, codebook_loss, commitment_loss)
    decode_latents(zq_bhwd) -> pixels_bhwc           post_quant_conv + decoder
    decode_codes(codes_bn) -> pixels_bhwc            (alias: decode) l2-normalised codebook rows
    encode(pixels_bhwc) -> codes_bn
    __call__(pixels_bhwc) -> (recon_bhwc, codes_bn, codebook_loss, commitment_loss)

Usage: `VQModel(cfg).apply({'params': p}, x, method=VQModel.encode)`.

Quantizer semantics (read this before training):
  * Decoding always uses l2-normalised codebook rows (HF `get_codebook_entry`, LlamaGen).
  * Nearest-code lookup: `l2_norm_lookup=False` (default) is exactly HF's `JanusVQVAEVectorQuantizer`
    (squared distance between the raw z and the raw codebook rows), so codes match transformers.
    `l2_norm_lookup=True` is LlamaGen's (and the original Janus repo's) `codebook_l2_norm`: z and
    the codebook are both l2-normalised before the distance. The two agree whenever the codebook
    rows have unit norm (our initialiser makes them so). If `VQConfig` gains a
    `codebook_l2_norm` field it is used when the attribute is left as None.
  * Losses (LlamaGen): codebook_loss = mean((zq - sg(z))^2), commitment_loss =
    mean((sg(zq) - z)^2), UNWEIGHTED: multiply the commitment term by its weight (LlamaGen: 0.25)
    in the training config. zq is returned with the straight-through estimator z + sg(zq - z).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxgen import parallel
from jaxgen.errors import UserError
from jaxgen.models.config import VQConfig

# Fixed by the architecture (HF hard-codes them in every GroupNorm of the VQ model).
NORM_GROUPS = 32
NORM_EPS = 1e-6
# feature maps stay split over the batch (inside parallel.activation_sharding)
ACT_BHWC = ("activation_batch", None, None, None)
# torch.nn.functional.normalize's default epsilon (guards zero vectors).
L2_NORMALIZE_EPS = 1e-12

_CONV_AXES = (None, None, "conv_in", "conv_out")


def _swish(x):
    return x * jax.nn.sigmoid(x)


def l2_normalize(x, axis=-1):
    """x / max(||x||, eps), as torch.nn.functional.normalize."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, L2_NORMALIZE_EPS)


def _conv(features, kernel, dtype, name, stride=1, padding=None):
    if padding is None:
        pad = kernel // 2
        padding = ((pad, pad), (pad, pad))
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=padding, dtype=dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), _CONV_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
        name=name)


def _group_norm(dtype, name):
    return nn.GroupNorm(
        num_groups=NORM_GROUPS, epsilon=NORM_EPS, dtype=dtype, use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
        name=name)


class ResnetBlock(nn.Module):
    """GN -> swish -> conv3 -> GN -> swish -> conv3, plus a 1x1 shortcut when channels change."""
    out_channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_bhwc):
        h = _conv(self.out_channels, 3, self.dtype, "conv1")(_swish(_group_norm(self.dtype, "norm1")(x_bhwc)))
        h = _conv(self.out_channels, 3, self.dtype, "conv2")(_swish(_group_norm(self.dtype, "norm2")(h)))
        if x_bhwc.shape[-1] != self.out_channels:
            x_bhwc = _conv(self.out_channels, 1, self.dtype, "nin_shortcut")(x_bhwc)
        return x_bhwc + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions (1x1 conv projections)."""
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_bhwc):
        b, hgt, wid, c = x_bhwc.shape
        h = _group_norm(self.dtype, "norm")(x_bhwc)
        q = _conv(c, 1, self.dtype, "q")(h).reshape(b, hgt * wid, c)
        k = _conv(c, 1, self.dtype, "k")(h).reshape(b, hgt * wid, c)
        v = _conv(c, 1, self.dtype, "v")(h).reshape(b, hgt * wid, c)
        weights_bqk = jnp.einsum("bqc,bkc->bqk", q, k) * (c ** -0.5)
        weights_bqk = jax.nn.softmax(weights_bqk.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bqk,bkc->bqc", weights_bqk, v).reshape(b, hgt, wid, c)
        return x_bhwc + _conv(c, 1, self.dtype, "proj_out")(out)


class Downsample(nn.Module):
    """Zero-pad right/bottom by one, then a stride-2 3x3 conv (HF's asymmetric padding)."""
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_bhwc):
        x_bhwc = jnp.pad(x_bhwc, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return _conv(x_bhwc.shape[-1], 3, self.dtype, "conv", stride=2, padding="VALID")(x_bhwc)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_bhwc):
        x_bhwc = jnp.repeat(jnp.repeat(x_bhwc, 2, axis=1), 2, axis=2)
        return _conv(x_bhwc.shape[-1], 3, self.dtype, "conv")(x_bhwc)


class MidBlock(nn.Module):
    """[resnet, attention, resnet] at the lowest resolution (attention optional)."""
    channels: int
    dtype: Any = jnp.float32
    attention: bool = True

    @nn.compact
    def __call__(self, x_bhwc):
        x_bhwc = ResnetBlock(self.channels, self.dtype, name="block_1")(x_bhwc)
        if self.attention:
            x_bhwc = AttnBlock(self.dtype, name="attn_1")(x_bhwc)
        return ResnetBlock(self.channels, self.dtype, name="block_2")(x_bhwc)


class Encoder(nn.Module):
    """pixels [B,H,W,in] -> latents [B,H/d,W/d,latent_channels]; attention at the last level only."""
    config: VQConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_bhwc):
        cfg = self.config
        levels = len(cfg.channel_multiplier)
        h = _conv(cfg.base_channels, 3, self.dtype, "conv_in")(x_bhwc)
        for i in range(levels):
            out_ch = cfg.base_channels * cfg.channel_multiplier[i]
            for j in range(cfg.num_res_blocks):
                h = ResnetBlock(out_ch, self.dtype, name=f"down_{i}_block_{j}")(h)
                if i == levels - 1 and cfg.encoder_attention:
                    h = AttnBlock(self.dtype, name=f"down_{i}_attn_{j}")(h)
                h = parallel.constrain(h, ACT_BHWC)
            if i != levels - 1:
                h = Downsample(self.dtype, name=f"down_{i}_downsample")(h)
        h = parallel.constrain(MidBlock(h.shape[-1], self.dtype, cfg.encoder_attention,
                                        name="mid")(h), ACT_BHWC)
        h = _swish(_group_norm(self.dtype, "norm_out")(h))
        return _conv(cfg.latent_channels, 3, self.dtype, "conv_out")(h)


class Decoder(nn.Module):
    """latents [B,h,w,latent_channels] -> pixels [B,h*d,w*d,out]. up_0 is the LOWEST resolution
    (HF builds `up` in reversed level order)."""
    config: VQConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z_bhwc):
        cfg = self.config
        levels = len(cfg.channel_multiplier)
        h = _conv(cfg.base_channels * cfg.channel_multiplier[-1], 3, self.dtype, "conv_in")(
            parallel.constrain(z_bhwc, ACT_BHWC))
        h = parallel.constrain(MidBlock(h.shape[-1], self.dtype, name="mid")(h), ACT_BHWC)
        for k, level in enumerate(reversed(range(levels))):
            out_ch = cfg.base_channels * cfg.channel_multiplier[level]
            for j in range(cfg.num_res_blocks + 1):
                h = ResnetBlock(out_ch, self.dtype, name=f"up_{k}_block_{j}")(h)
                if level == levels - 1:
                    h = AttnBlock(self.dtype, name=f"up_{k}_attn_{j}")(h)
                h = parallel.constrain(h, ACT_BHWC)
            if level != 0:
                h = parallel.constrain(Upsample(self.dtype, name=f"up_{k}_upsample")(h), ACT_BHWC)
        h = _swish(_group_norm(self.dtype, "norm_out")(h))
        return parallel.constrain(_conv(cfg.out_channels, 3, self.dtype, "conv_out")(h), ACT_BHWC)


def _unit_rows_init(rng, shape, dtype=jnp.float32):
    """Gaussian rows rescaled to unit l2 norm (LlamaGen normalises its codebook at init)."""
    return l2_normalize(jax.random.normal(rng, shape, dtype))


def check_vq_config(config: VQConfig):
    """Raise UserError for VQ configs HF's JanusVQVAE cannot represent."""
    if config.double_latent:
        raise UserError("vq.double_latent=True is not supported (HF's JanusVQVAE cannot run it "
                        "either: quant_conv expects latent_channels inputs); set vq.double_latent=False.")
    for i, m in enumerate(config.channel_multiplier):
        ch = config.base_channels * m
        if ch % NORM_GROUPS:
            raise UserError(
                f"vq.base_channels * channel_multiplier[{i}] = {ch} is not a multiple of "
                f"{NORM_GROUPS} (GroupNorm groups); choose base_channels/channel_multiplier so it is.")


class VQModel(nn.Module):
    """VQ-VAE: encoder -> quant_conv -> codebook -> post_quant_conv -> decoder (see module doc).

    Param tree (names mirror HF): encoder, quant_conv, codebook [num_embeddings, embed_dim]
    (HF: quantize.embedding.weight), post_quant_conv, decoder.
    """
    config: VQConfig
    l2_norm_lookup: Optional[bool] = None  # None: config.codebook_l2_norm if present, else HF
    dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        check_vq_config(cfg)
        self.encoder = Encoder(cfg, self.dtype)
        self.decoder = Decoder(cfg, self.dtype)
        self.quant_conv = _conv(cfg.embed_dim, 1, self.dtype, None)
        self.post_quant_conv = _conv(cfg.latent_channels, 1, self.dtype, None)
        self.codebook = self.param(
            "codebook", nn.with_logical_partitioning(_unit_rows_init, ("codebook", None)),
            (cfg.num_embeddings, cfg.embed_dim))

    def _use_l2_lookup(self) -> bool:
        if self.l2_norm_lookup is not None:
            return self.l2_norm_lookup
        return bool(getattr(self.config, "codebook_l2_norm", False))

    def encode_continuous(self, pixels_bhwc):
        """pixels [B,H,W,C] in [-1,1] -> z [B,H/d,W/d,embed_dim] (after quant_conv)."""
        return self.quant_conv(self.encoder(pixels_bhwc.astype(self.dtype)))

    def quantize(self, z_bhwd):
        """z [B,h,w,D] -> (zq [B,h,w,D] straight-through, codes [B,h*w] int32, codebook_loss,
        commitment_loss) (scalars, float32, unweighted)."""
        b, h, w, d = z_bhwd.shape
        z = z_bhwd.astype(jnp.float32)
        codebook = self.codebook.astype(jnp.float32)
        if self._use_l2_lookup():
            z = l2_normalize(z)
            search = l2_normalize(codebook)
        else:
            search = codebook
        z_nd = z.reshape(-1, d)
        # Same expansion and argmin as HF: |z|^2 + |e|^2 - 2 z.e (keeps codes bit-identical).
        dist_nk = (jnp.sum(z_nd ** 2, axis=1, keepdims=True) + jnp.sum(search ** 2, axis=1)[None]
                   - 2.0 * jnp.einsum("nd,kd->nk", z_nd, search, precision=jax.lax.Precision.HIGHEST))
        codes_n = jnp.argmin(dist_nk, axis=1).astype(jnp.int32)
        zq = l2_normalize(codebook)[codes_n].reshape(b, h, w, d)
        codebook_loss = jnp.mean((zq - jax.lax.stop_gradient(z)) ** 2)
        commitment_loss = jnp.mean((jax.lax.stop_gradient(zq) - z) ** 2)
        zq_st = z + jax.lax.stop_gradient(zq - z)
        return zq_st.astype(z_bhwd.dtype), codes_n.reshape(b, h * w), codebook_loss, commitment_loss

    def decode_latents(self, zq_bhwd):
        """zq [B,h,w,embed_dim] -> pixels [B,h*d,w*d,out_channels], ~[-1,1] (not clipped)."""
        return self.decoder(self.post_quant_conv(zq_bhwd.astype(self.dtype)))

    def lookup_codes(self, codes_bn):
        """codes [B,N] (N a square) -> l2-normalised codebook rows [B,sqrt(N),sqrt(N),embed_dim]."""
        b, n = codes_bn.shape
        side = int(round(n ** 0.5))
        if side * side != n:
            raise UserError(f"decode expects a square grid of codes, got {n} codes per image; "
                            f"pass [B, side*side] codes (this config: {self.config.num_image_tokens}).")
        rows = l2_normalize(self.codebook.astype(jnp.float32))[codes_bn]
        return rows.reshape(b, side, side, -1)

    def decode_codes(self, codes_bn):
        """codes [B,N] int -> pixels [B,H,W,C] ~[-1,1]."""
        return self.decode_latents(self.lookup_codes(codes_bn))

    def decode(self, codes_bn):
        """Alias of decode_codes."""
        return self.decode_codes(codes_bn)

    def encode(self, pixels_bhwc):
        """pixels [B,H,W,C] in [-1,1] -> codes [B,N] int32 (row-major grid)."""
        return self.quantize(self.encode_continuous(pixels_bhwc))[1]

    def __call__(self, pixels_bhwc):
        """pixels -> (recon [B,H,W,C], codes [B,N], codebook_loss, commitment_loss)."""
        zq, codes, codebook_loss, commitment_loss = self.quantize(self.encode_continuous(pixels_bhwc))
        return self.decode_latents(zq), codes, codebook_loss, commitment_loss
