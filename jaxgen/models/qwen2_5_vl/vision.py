"""Qwen2.5-VL vision encoder in Flax Linen: what HF's `Qwen2_5_VisionTransformerPretrainedModel`
computes (its `pooler_output`, the merged features the language model reads).

    plan = vision_plan(config, grid_thw)                     # NumPy, from the static grid
    VisionTower(config).apply({'params': p}, pixel_values_nk, plan) -> features [M, out_hidden]

pixel_values_nk [N, C*T*P*P]: the patches of every image concatenated, in the order HF's
`Qwen2VLImageProcessor` writes them (per image: t, h/m, w/m, m, m with m the spatial merge size;
each row is (C, T, P, P) flattened). grid_thw: one (t, h, w) in patches per image, static
(Python ints): the window order and attention segments are computed from it on the host.
N = sum(t*h*w), M = N / m^2.

Blocks (pre-norm, RMSNorm eps 1e-6): x + attn(norm1(x)); x + mlp(norm2(x)). Attention is
bidirectional inside segments: one segment per image frame in the blocks at
`fullatt_block_indexes`, one per window (HF's `get_window_index`) elsewhere. Segments are run
padded to the longest one ([S, Lmax] gathers), so the cost is sum(len * Lmax), not N^2.

Parameter layout (`params` of `VisionTower`):
    patch_embed/kernel [C*T*P*P, D]     (HF Conv3d weight [D, C, T, P, P], reshaped)
    blocks_{i}/norm1/scale, norm2/scale [D]
    blocks_{i}/attn/qkv/kernel [D, 3, D], bias [3, D]; attn/proj/kernel [D, D], bias [D]
    blocks_{i}/mlp/{gate_proj,up_proj}/kernel [D, I], bias [I]; down_proj/kernel [I, D], bias [D]
    merger/ln_q/scale [D]; merger/mlp_0/kernel [m^2 D, m^2 D], bias; merger/mlp_2/kernel
    [m^2 D, out_hidden], bias
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.models.llama import RMSNorm
from jaxgen.models.qwen2_5_vl.config import VisionConfig
from jaxgen.models.qwen2_5_vl.text import GatedMLP, dense

_PAD = -100  # HF's marker for the padded cells of a window grid


def normalize_grid(grid_thw) -> tuple:
    """((t, h, w), ...) of Python ints from a list, array or tensor of shape [images, 3]."""
    return tuple(tuple(int(v) for v in row) for row in np.asarray(grid_thw).reshape(-1, 3))


def window_index(grid_thw, merge: int, merger_window: int):
    """HF's `get_vision_window_index`: (order of the merged tokens [M], cu_window_seqlens)."""
    order, cu, offset = [], [0], 0
    unit = merge * merge
    for t, h, w in grid_thw:
        gh, gw = h // merge, w // merge
        index = np.arange(t * gh * gw).reshape(t, gh, gw)
        # HF pads by a whole window when the side already divides: those windows are empty
        pad_h, pad_w = merger_window - gh % merger_window, merger_window - gw % merger_window
        nh, nw = (gh + pad_h) // merger_window, (gw + pad_w) // merger_window
        padded = np.pad(index, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=_PAD)
        padded = padded.reshape(t, nh, merger_window, nw, merger_window).transpose(0, 1, 3, 2, 4)
        padded = padded.reshape(t, nh * nw, merger_window, merger_window)
        seqlens = (padded != _PAD).sum((2, 3)).reshape(-1)
        flat = padded.reshape(-1)
        order.append(flat[flat != _PAD] + offset)
        cu.extend((np.cumsum(seqlens) * unit + cu[-1]).tolist())
        offset += t * gh * gw
    cu = np.asarray(cu, np.int64)
    cu = cu[np.concatenate([[True], cu[1:] != cu[:-1]])]  # torch.unique_consecutive
    return np.concatenate(order), cu


def _segments(cu: np.ndarray):
    """Padded gathers for the segments [cu[i], cu[i+1]) of a sequence of cu[-1] rows:
    gather [S, Lmax] (row index, 0 where padded), valid [S, Lmax], and for every row its
    (segment, offset) to gather the outputs back."""
    lengths = np.diff(cu)
    lmax = int(lengths.max())
    offsets = np.arange(lmax)[None, :]
    valid = offsets < lengths[:, None]
    gather = np.where(valid, cu[:-1, None] + offsets, 0)
    seg = np.repeat(np.arange(len(lengths)), lengths)
    off = np.arange(int(cu[-1])) - cu[:-1][seg]
    return {"gather": gather.astype(np.int32), "valid": valid,
            "seg": seg.astype(np.int32), "off": off.astype(np.int32)}


def _rotary_positions(grid_thw, merge: int) -> np.ndarray:
    """(row, col) of every patch [N, 2] in the processor's merge-block order."""
    out = []
    for t, h, w in grid_thw:
        hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        block = (h // merge, merge, w // merge, merge)
        hpos = hpos.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
        wpos = wpos.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
        out.append(np.tile(np.stack([hpos, wpos], -1), (t, 1)))
    return np.concatenate(out)


def vision_plan(config: VisionConfig, grid_thw) -> dict:
    """Host-side index arrays for one static grid (see the module docstring):
    patch_order [N] (window order of the patches), positions [N, 2] (row, col, already in window
    order), unpermute [M] (merged tokens back to image order), full / window segments."""
    grid_thw = normalize_grid(grid_thw)
    m = config.spatial_merge_size
    for t, h, w in grid_thw:
        if h % m or w % m or min(t, h, w) < 1:
            raise ValueError(f"image grid (t, h, w) = {(t, h, w)}: h and w must be positive "
                             f"multiples of spatial_merge_size {m}")
    merged_order, cu_window = window_index(grid_thw, m, config.merger_window)
    unit = config.merge_unit
    patch_order = (merged_order[:, None] * unit + np.arange(unit)).reshape(-1)
    frames = [h * w for t, h, w in grid_thw for _ in range(t)]
    cu_full = np.concatenate([[0], np.cumsum(frames)])
    return {
        "patch_order": patch_order.astype(np.int32),
        "positions": _rotary_positions(grid_thw, m)[patch_order].astype(np.int32),
        "unpermute": np.argsort(merged_order).astype(np.int32),
        "full": _segments(cu_full),
        "window": _segments(cu_window),
    }


def _dense(features, axes, dtype, pdtype, name, use_bias=True):
    return dense(features, axes, dtype, pdtype, name, use_bias)


def rotary_cos_sin(positions_n2, head_dim: int, theta: float):
    """HF's axial 2D rotary: head_dim/4 frequencies, rows then columns, the pair repeated.
    -> cos, sin [N, head_dim] float32."""
    spatial = head_dim // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(0, spatial, 2, dtype=jnp.float32) / spatial))
    freqs = positions_n2.astype(jnp.float32)[:, :, None] * inv_freq  # [N, 2, hd/4]
    freqs = freqs.reshape(freqs.shape[0], -1)  # rows' frequencies, then columns'
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def _rotate(x, cos, sin):
    """Rotate-half rotary in float32 (HF casts q, k up for it)."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos[:, None, :] + rotated * sin[:, None, :]).astype(x.dtype)


def segment_attention(q_nhd, k_nhd, v_nhd, seg: dict, dtype):
    """Bidirectional attention inside each segment. -> [N, H, hd]."""
    gather, valid = seg["gather"], seg["valid"]
    q, k, v = q_nhd[gather], k_nhd[gather], v_nhd[gather]  # [S, Lmax, H, hd]
    scale = q_nhd.shape[-1] ** -0.5
    scores = jnp.einsum("slhd,smhd->shlm", q, k).astype(jnp.float32) * scale
    scores = jnp.where(valid[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum("shlm,smhd->slhd", probs, v)
    return out[seg["seg"], seg["off"]]


class VisionAttention(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, x_nd, cos, sin, seg):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        n, d = x_nd.shape
        h, hd = cfg.num_heads, cfg.head_dim
        # one fused projection as in HF, kept [D, 3, D] so 'heads' shards q, k and v alike
        qkv = nn.DenseGeneral(
            (3, d), dtype=dtype, param_dtype=pdtype, name="qkv",
            kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                     ("embed", None, "heads")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None, "heads")))(x_nd)
        qkv = qkv.reshape(n, 3, h, hd)
        q, k, v = _rotate(qkv[:, 0], cos, sin), _rotate(qkv[:, 1], cos, sin), qkv[:, 2]
        out = segment_attention(q, k, v, seg, dtype).reshape(n, d)
        return _dense(d, ("heads", "embed"), dtype, pdtype, "proj")(out)


class VisionBlock(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, x_nd, cos, sin, seg):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        norm = lambda name: RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name=name)
        x_nd = x_nd + VisionAttention(cfg, name="attn")(norm("norm1")(x_nd), cos, sin, seg)
        mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, True, cfg.dtype,
                       cfg.param_dtype, name="mlp")
        return x_nd + mlp(norm("norm2")(x_nd))


class PatchMerger(nn.Module):
    """RMSNorm, then each m x m block of neighbouring patches concatenated, then Linear, exact
    GELU, Linear to the language model's width."""
    config: VisionConfig

    @nn.compact
    def __call__(self, x_nd):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        width = cfg.hidden_size * cfg.merge_unit
        x = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="ln_q")(x_nd).reshape(-1, width)
        x = _dense(width, (None, "mlp"), dtype, pdtype, "mlp_0")(x)
        x = jax.nn.gelu(x, approximate=False)
        return _dense(cfg.out_hidden_size, ("mlp", "embed"), dtype, pdtype, "mlp_2")(x)


class VisionTower(nn.Module):
    """pixel_values [N, C*T*P*P] + vision_plan(...) -> merged features [N / m^2, out_hidden]
    in image order (HF's pooler_output)."""
    config: VisionConfig

    @nn.compact
    def __call__(self, pixel_values_nk, plan):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        if pixel_values_nk.shape != (len(plan["patch_order"]), cfg.patch_dim):
            raise ValueError(f"pixel_values has shape {pixel_values_nk.shape}; the grids need "
                             f"{(len(plan['patch_order']), cfg.patch_dim)} ([sum(t*h*w), "
                             "C*temporal_patch*patch*patch])")
        # the Conv3d with kernel = stride = the patch is one matmul on the flattened patch
        x = _dense(cfg.hidden_size, (None, "embed"), dtype, pdtype, "patch_embed",
                   use_bias=False)(pixel_values_nk.astype(dtype))
        x = x[plan["patch_order"]]  # window order: each window's patches contiguous
        cos, sin = rotary_cos_sin(jnp.asarray(plan["positions"]), cfg.head_dim, cfg.rope_theta)
        full = set(cfg.fullatt_block_indexes)
        for i in range(cfg.depth):
            seg = plan["full"] if i in full else plan["window"]
            x = VisionBlock(cfg, name=f"blocks_{i}")(x, cos, sin, seg)
        return PatchMerger(cfg, name="merger")(x)[plan["unpermute"]]
