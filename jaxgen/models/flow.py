"""The diffusion path: a flow-matching decoder driven by the unified model's hidden states.

MetaQuery / BLIP3-o style. N learnable query embeddings are appended after the text (prompt and
chain of thought); the LLM's final hidden states at those N places pass a connector MLP and become
the cross-attention context of a small DiT. The DiT predicts the flow velocity v = eps - x0 on
the VQ tokenizer's latent grid (x_t = (1 - t) x0 + t eps), so the VQ decoder turns a sample into
pixels the way SD3 uses its VAE, and the token path and the diffusion path share one tokenizer.

Latents: x0 = the l2-normalised codebook rows of an image's codes [B, grid, grid, embed_dim],
times sqrt(embed_dim) so each component has about unit variance like the noise. A sample goes
back through `latents_to_codes` (nearest code) or straight into the VQ decoder.

Params: {'queries': [N, D_llm], 'connector': MLP, 'decoder': DiT}; the LLM's own params stay in
the Janus tree (frozen or not is the trainer's choice). DiT blocks follow PixArt-alpha: adaLN-zero
(timestep-modulated, zero-initialised gates, so every block starts as the identity) around
self-attention and the MLP, plain pre-norm cross-attention to the context in between.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen import parallel
from jaxgen.models import janus, vq
from jaxgen.models.config import ConfigError, JanusConfig, dataclass_from_dict
from jaxgen.models.llama import ACT_BLD


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """The query tokens, connector and DiT of the diffusion path (sizes only; the latent grid
    comes from the Janus config's VQ)."""
    num_queries: int = 16
    hidden_size: int = 256  # DiT width
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    connector_depth: int = 2
    frequency_dim: int = 256  # sinusoidal timestep features before the timestep MLP
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"

    def __post_init__(self):
        for name in ("num_queries", "hidden_size", "num_layers", "num_heads", "mlp_ratio",
                     "connector_depth", "frequency_dim"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"flow.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"flow.hidden_size={self.hidden_size} must divide by "
                              f"flow.num_heads={self.num_heads}")
        if self.frequency_dim % 2:
            raise ConfigError(f"flow.frequency_dim must be even, got {self.frequency_dim}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FlowConfig":
        return dataclass_from_dict(cls, dict(d), "flow config")


def latent_shape(jc: JanusConfig) -> tuple:
    """(grid, grid, embed_dim): one image's latent."""
    return (jc.vq.grid, jc.vq.grid, jc.vq.embed_dim)


def _dense(features, axes, fc: FlowConfig, name, init=None):
    init = init or nn.initializers.xavier_uniform()
    return nn.Dense(features, dtype=jnp.dtype(fc.dtype), param_dtype=jnp.dtype(fc.param_dtype),
                    name=name, kernel_init=nn.with_logical_partitioning(init, axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]))


def timestep_features(t_b, dim: int):
    """t [B] in [0, 1] -> [B, dim] sinusoids of 1000 t (DiT's convention: integer-like steps)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    args = 1000.0 * t_b.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class Connector(nn.Module):
    """LLM hidden [B, N, D_llm] -> DiT context [B, N, D]: Linear -> (GELU -> Linear) * (depth-1)."""
    config: FlowConfig

    @nn.compact
    def __call__(self, h_bnd):
        fc = self.config
        x = _dense(fc.hidden_size, ("embed", "mlp"), fc, "fc_0")(h_bnd)
        for i in range(1, fc.connector_depth):
            x = _dense(fc.hidden_size, ("mlp", "mlp"), fc, f"fc_{i}")(nn.gelu(x))
        return parallel.constrain(x, ACT_BLD)


def _modulate(x_bld, shift_bd, scale_bd):
    return x_bld * (1.0 + scale_bd[:, None]) + shift_bd[:, None]


class DiTBlock(nn.Module):
    """adaLN-zero self-attention, cross-attention to the context, adaLN-zero MLP."""
    config: FlowConfig

    @nn.compact
    def __call__(self, x_bld, c_bd, ctx_bnd, ctx_mask_bn):
        fc = self.config
        dt, pdt = jnp.dtype(fc.dtype), jnp.dtype(fc.param_dtype)
        d = fc.hidden_size
        mod = _dense(6 * d, ("mlp", "embed"), fc, "adaln", init=nn.initializers.zeros)(nn.silu(c_bd))
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, axis=-1)

        def attention(name):
            init = nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                ("embed", "heads", None))
            out_init = nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                    ("heads", None, "embed"))
            return nn.MultiHeadDotProductAttention(
                num_heads=fc.num_heads, dtype=dt, param_dtype=pdt, kernel_init=init,
                out_kernel_init=out_init, name=name)

        norm = lambda name: nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=dt,
                                         name=name)
        h = _modulate(norm("norm_attn")(x_bld), shift_a, scale_a)
        x_bld = x_bld + gate_a[:, None] * attention("self_attn")(h, h)
        h = nn.LayerNorm(epsilon=1e-6, dtype=dt, param_dtype=pdt, name="norm_cross")(x_bld)
        mask = ctx_mask_bn[:, None, None, :]  # [B, heads, L, N]
        x_bld = x_bld + attention("cross_attn")(h, ctx_bnd, mask=mask)
        h = _modulate(norm("norm_mlp")(x_bld), shift_m, scale_m)
        h = _dense(fc.mlp_ratio * d, ("embed", "mlp"), fc, "mlp_in")(h)
        h = _dense(d, ("mlp", "embed"), fc, "mlp_out")(nn.gelu(h, approximate=True))
        return x_bld + gate_m[:, None] * h


class FlowDecoder(nn.Module):
    """Velocity of the flow: (x_t [B, h, w, C], t [B], context [B, N, D]) -> v [B, h, w, C]."""
    config: FlowConfig
    grid: int
    channels: int

    @nn.compact
    def __call__(self, x_bhwc, t_b, ctx_bnd, ctx_mask_bn):
        fc = self.config
        b = x_bhwc.shape[0]
        d = fc.hidden_size
        x = x_bhwc.reshape(b, self.grid * self.grid, self.channels).astype(jnp.dtype(fc.dtype))
        x = _dense(d, (None, "embed"), fc, "patch_in")(x)
        pos = self.param("position_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), (None, "embed")), (self.grid * self.grid, d),
            jnp.dtype(fc.param_dtype))
        # activations stay split over the batch (inside parallel.activation_sharding)
        x = parallel.constrain(x + pos[None].astype(x.dtype), ACT_BLD)
        ctx_bnd = parallel.constrain(ctx_bnd, ACT_BLD)
        c = timestep_features(t_b, fc.frequency_dim)
        c = _dense(d, (None, "embed"), fc, "time_in")(c)
        c = _dense(d, ("embed", "embed"), fc, "time_out")(nn.silu(c))
        for i in range(fc.num_layers):
            x = parallel.constrain(DiTBlock(fc, name=f"block_{i}")(x, c, ctx_bnd, ctx_mask_bn),
                                   ACT_BLD)
        shift, scale = jnp.split(
            _dense(2 * d, ("mlp", "embed"), fc, "final_adaln", init=nn.initializers.zeros)(
                nn.silu(c)), 2, axis=-1)
        x = _modulate(nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False,
                                   dtype=jnp.dtype(fc.dtype), name="final_norm")(x), shift, scale)
        v = _dense(self.channels, ("embed", None), fc, "patch_out", init=nn.initializers.zeros)(x)
        return v.astype(jnp.float32).reshape(x_bhwc.shape)


# ---------------------------------------------------------------------------------------------
# Pure functions of a params pytree.

def _connector(fc):
    return Connector(fc)


def _decoder(fc, jc):
    grid, _, channels = latent_shape(jc)
    return FlowDecoder(fc, grid, channels)


def _boxed_params(fc: FlowConfig, jc: JanusConfig, rng):
    k_q, k_c, k_d = jax.random.split(rng, 3)
    d_llm = jc.text.hidden_size
    queries = nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed"))(
        k_q, (fc.num_queries, d_llm), jnp.dtype(fc.param_dtype))
    connector = _connector(fc).init(k_c, jnp.zeros((1, fc.num_queries, d_llm)))["params"]
    grid, _, channels = latent_shape(jc)
    decoder = _decoder(fc, jc).init(
        k_d, jnp.zeros((1, grid, grid, channels)), jnp.zeros((1,)),
        jnp.zeros((1, fc.num_queries, fc.hidden_size)), jnp.ones((1, fc.num_queries), bool))["params"]
    return {"queries": queries, "connector": connector, "decoder": decoder}


def init_flow_params(fc: FlowConfig, jc: JanusConfig, rng) -> dict:
    """Fresh flow params (plain arrays)."""
    return nn.meta.unbox(_boxed_params(fc, jc, rng))


def param_logical_axes(fc: FlowConfig, jc: JanusConfig) -> dict:
    """Pytree like the flow params whose leaves are tuples of logical axis names."""
    boxed = jax.eval_shape(lambda r: _boxed_params(fc, jc, r), jax.random.PRNGKey(0))

    def axes(leaf):
        if isinstance(leaf, nn.meta.AxisMetadata):
            return tuple(leaf.names)
        return None if leaf.ndim == 0 else (None,) * leaf.ndim

    return jax.tree_util.tree_map(axes, boxed, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def query_hidden_states(janus_params, jc: JanusConfig, flow_params, ids_bl, mask_bl):
    """LLM final hidden states at the query places: [B, N, D_llm].

    ids_bl [B, L] left-padded text (prompt, chain of thought, <begin_of_image>), mask_bl [B, L]
    true on real tokens; the N queries follow the last real token.
    """
    b = ids_bl.shape[0]
    queries = flow_params["queries"]
    emb = janus.embed_text(janus_params, jc, ids_bl)
    q = jnp.broadcast_to(queries[None].astype(emb.dtype), (b,) + queries.shape)
    emb = jnp.concatenate([emb, q], axis=1)
    mask = jnp.concatenate([mask_bl.astype(bool), jnp.ones((b, queries.shape[0]), bool)], axis=1)
    positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
    hidden, _ = janus.decode(janus_params, jc, emb, positions, mask)
    return hidden[:, ids_bl.shape[1]:]


def condition(janus_params, jc: JanusConfig, flow_params, fc: FlowConfig, ids_bl, mask_bl):
    """The DiT's cross-attention context [B, N, D] for left-padded text ids_bl [B, L]."""
    h = query_hidden_states(janus_params, jc, flow_params, ids_bl, mask_bl)
    return _connector(fc).apply({"params": flow_params["connector"]}, h)


def velocity(flow_params, fc: FlowConfig, jc: JanusConfig, x_bhwc, t_b, ctx_bnd, ctx_mask_bn=None):
    """v = eps - x0 predicted at (x_t [B, h, w, C], t [B]) given context [B, N, D]."""
    if ctx_mask_bn is None:
        ctx_mask_bn = jnp.ones(ctx_bnd.shape[:2], bool)
    return _decoder(fc, jc).apply({"params": flow_params["decoder"]}, x_bhwc, t_b, ctx_bnd,
                                  ctx_mask_bn)


def latent_scale(jc: JanusConfig) -> float:
    """Unit-length codebook rows times sqrt(embed_dim): components of about unit variance."""
    return math.sqrt(jc.vq.embed_dim)


def codes_to_latents(janus_params, jc: JanusConfig, codes_bn):
    """Image codes [B, grid*grid] -> flow latents x0 [B, grid, grid, embed_dim]."""
    rows = janus.vq_module(jc).apply({"params": janus_params["vqmodel"]}, codes_bn,
                                     method=vq.VQModel.lookup_codes)
    return rows * latent_scale(jc)


def latents_to_codes(janus_params, jc: JanusConfig, x_bhwc):
    """Flow latents [B, grid, grid, embed_dim] -> nearest codes [B, grid*grid] int32."""
    model = vq.VQModel(jc.vq, l2_norm_lookup=True)
    return model.apply({"params": janus_params["vqmodel"]}, x_bhwc / latent_scale(jc),
                       method=vq.VQModel.quantize)[1]


def latents_to_pixels(janus_params, jc: JanusConfig, x_bhwc, snap: bool = True):
    """Flow latents -> pixels [B, H, W, 3] in about [-1, 1]: through the nearest codes (snap, the
    images the token path could also have drawn) or straight into the VQ decoder."""
    if snap:
        return janus.vq_decode(janus_params, jc, latents_to_codes(janus_params, jc, x_bhwc))
    return janus.vq_module(jc).apply({"params": janus_params["vqmodel"]}, vq.l2_normalize(x_bhwc),
                                     method=vq.VQModel.decode_latents)
