"""Janus-Pro unified model as pure functions of a plain params pytree.

Functional API (binding contract; `config` is a frozen, hashable JanusConfig, static under jit):

    init_params(config, rng) -> params
    param_logical_axes(config) -> pytree like params, leaves = tuple of logical axis names
    embed_text(params, config, ids_bl) -> f32[B,L,D]
    embed_image_codes(params, config, codes_bl) -> [B,L,D]
    embed_understanding_images(params, config, pixels_bhwc in [-1,1]) -> [B,N,D]
    understanding_embeds(params, config, pixels_bhwc=None, codes_bn=None) -> [B,N,D]
    merge_image_embeds(emb_bld, ids_bl, image_emb_bnd, image_token_id) -> emb_bld
    init_cache(config, batch, max_len, dtype=jnp.float32) -> {'k','v'}: see llama.init_cache
    decode(params, config, emb_bld, positions_bl, kv_mask_bs, cache=None, cache_index=0,
           segment_ids_bl=None) -> (hidden_bld, cache)
    text_logits(params, config, hidden_bld) -> [B,L,vocab]
    image_logits(params, config, hidden_bld) -> [B,L,num_embeddings]
    vq_encode(params, config, pixels_bhwc in [-1,1]) -> codes_bn int32 (row-major grid)
    vq_decode(params, config, codes_bn) -> pixels_bhwc f32 in ~[-1,1]
    config_from_configdict(cd) -> JanusConfig

Every function is jit-able with `config` static (e.g. `jax.jit(decode, static_argnums=1)`);
`cache_index` may be traced. Conversion to/from Hugging Face: jaxgen/convert/hf.py.
Parity with transformers (1e-4, float32): tests/models/test_janus_parity.py.

Top-level param keys mirror Hugging Face: 'language_model', 'lm_head', 'vision_model', 'aligner',
'vqmodel', 'generation_embeddings', 'generation_aligner', 'generation_head'.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen import parallel
from jaxgen.errors import PromptTooLongError, UserError
from jaxgen.models import llama, vision
from jaxgen.models import vq as vq_lib
from jaxgen.models.config import JanusConfig


def config_from_configdict(cd) -> JanusConfig:
    """A job ConfigDict with a `model` field (or the model ConfigDict itself) -> JanusConfig."""
    if hasattr(cd, "to_dict"):
        cd = cd.to_dict()
    cd = dict(cd)
    if "model" in cd and isinstance(cd["model"], dict):
        cd = cd["model"]
    return JanusConfig.from_dict(cd)


def _dense(features, axes, dtype, pdtype, name, use_bias=True):
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=pdtype, name=name,
                    kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]))


def _gelu(x):
    return jax.nn.gelu(x, approximate=False)  # Janus uses exact (erf) GELU everywhere


class AlignerMLP(nn.Module):
    """fc1 -> [GELU -> hidden_layers_i] * (depth - 1): maps vision / VQ features into the LLM."""
    features: int
    depth: int
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        dt, pdt = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
        # x [B, N, F]: kept split over the batch, else XLA splits it like the FSDP-split
        # kernels and gathers the whole batch onto every device
        x = parallel.constrain(_dense(self.features, (None, "embed"), dt, pdt, "fc1")(x),
                               llama.ACT_BLD)
        for i in range(self.depth - 1):
            x = parallel.constrain(
                _dense(self.features, (None, "embed"), dt, pdt, f"hidden_layers_{i}")(_gelu(x)),
                llama.ACT_BLD)
        return x


class GenerationHead(nn.Module):
    """proj_out -> GELU -> vision_head: image-token logits from LLM hidden states."""
    projection_dim: int
    num_embeddings: int
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        dt, pdt = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
        x = _dense(self.projection_dim, ("embed", "mlp"), dt, pdt, "proj_out")(x)
        return _dense(self.num_embeddings, ("mlp", "vocab"), dt, pdt, "vision_head")(_gelu(x))


# ---------------------------------------------------------------------------------------------
# Module factories: one Linen module per top-level params key (params stay a plain dict).

def _language_model(config):
    return llama.LlamaModel(config.text)


def _lm_head(config):
    t = config.text
    return _dense(t.vocab_size, ("embed", "vocab"), jnp.dtype(t.dtype), jnp.dtype(t.param_dtype),
                  None, use_bias=False)


def vision_module(config):
    """The understanding path's vision tower (params key 'vision_model')."""
    return vision.VisionTower(config.vision)


def _aligner(config):
    v, t = config.vision, config.text
    return AlignerMLP(v.projection_dim, v.depth, t.dtype, t.param_dtype)


def vq_module(config):
    """The VQ image tokenizer (params key 'vqmodel')."""
    return vq_lib.VQModel(config.vq)


def _generation_embeddings(config):
    q = config.vq
    return nn.Embed(q.num_embeddings, q.embed_dim, param_dtype=jnp.dtype(config.text.param_dtype),
                    embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                ("codebook", None)))


def _generation_aligner(config):
    q, t = config.vq, config.text
    return AlignerMLP(q.projection_dim, q.num_hidden_layers, t.dtype, t.param_dtype)


def _generation_head(config):
    q, t = config.vq, config.text
    return GenerationHead(q.projection_dim, q.num_embeddings, t.dtype, t.param_dtype)


def _image_positions(config):
    return nn.Embed(config.num_image_tokens, config.text.hidden_size,
                    param_dtype=jnp.dtype(config.text.param_dtype),
                    embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                (None, "embed")))


_PARTS = {
    "language_model": _language_model,
    "lm_head": _lm_head,
    "vision_model": vision_module,
    "aligner": _aligner,
    "vqmodel": vq_module,
    "generation_embeddings": _generation_embeddings,
    "generation_aligner": _generation_aligner,
    "generation_head": _generation_head,
    "image_positions": _image_positions,  # only with config.image_position_embeddings
}


def _parts(config) -> list:
    return [k for k in _PARTS if k != "image_positions" or config.image_position_embeddings]


def init_part(key, config, rng):
    """Boxed (nn.Partitioned) params of one top-level part (a key of `init_params`)."""
    module = _PARTS[key](config)
    t, v, q = config.text, config.vision, config.vq
    one = jnp.zeros((1, 1), jnp.int32)
    if key == "language_model":
        emb = jnp.zeros((1, 1, t.hidden_size), jnp.float32)
        variables = module.init(rng, emb, one, jnp.ones((1, 1), bool))
    elif key == "lm_head":
        variables = module.init(rng, jnp.zeros((1, t.hidden_size)))
    elif key == "vision_model":
        variables = module.init(rng, jnp.zeros((1, v.image_size, v.image_size, v.num_channels)))
    elif key == "aligner":
        variables = module.init(rng, jnp.zeros((1, v.hidden_size)))
    elif key == "vqmodel":
        # Weight shapes do not depend on the image side: the smallest input compiles fastest.
        variables = module.init(rng, jnp.zeros((1, q.downsample, q.downsample, q.in_channels)))
    elif key in ("generation_embeddings", "image_positions"):
        variables = module.init(rng, one)
    elif key == "generation_aligner":
        variables = module.init(rng, jnp.zeros((1, q.embed_dim)))
    elif key == "generation_head":
        variables = module.init(rng, jnp.zeros((1, q.image_token_embed_dim)))
    return dict(variables["params"])


def _boxed_params(config, rng):
    fixed = [k for k in _PARTS if k != "image_positions"]
    keys = dict(zip(fixed, jax.random.split(rng, len(fixed))))
    # the optional part's key comes from its own fold, so the others keep their init
    keys["image_positions"] = jax.random.fold_in(rng, len(fixed))
    return {k: init_part(k, config, keys[k]) for k in _parts(config)}


def init_params(config: JanusConfig, rng) -> dict:
    """Random parameters (plain unboxed pytree) with the layout conversion expects."""
    return _init_params_jit(config, rng)


def _fast_init_key(rng):
    """A counter-based ('unsafe_rbg') key derived from `rng` (raw uint32[2] or typed key).

    XLA compiles one threefry expansion per parameter: ~150 of them made the tiny model's init
    compile for ~50 s on CPU; RngBitGenerator-based keys compile in a fraction of that."""
    data = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
    data = data.astype(jnp.uint32).reshape(-1)[:2]
    return jax.random.wrap_key_data(jnp.concatenate([data, data ^ jnp.uint32(0x9E3779B9)]),
                                    impl="unsafe_rbg")


@functools.partial(jax.jit, static_argnums=0)
def _init_params_jit(config, rng):
    # One compiled program: eager init dispatches thousands of small ops (tens of seconds).
    return nn.meta.unbox(_boxed_params(config, _fast_init_key(rng)))


def param_logical_axes(config: JanusConfig) -> dict:
    """Pytree like params whose leaves are tuples of logical axis names (None: replicated)."""
    boxed = jax.eval_shape(lambda r: _boxed_params(config, r), jax.random.PRNGKey(0))

    def axes(leaf):
        if isinstance(leaf, nn.meta.AxisMetadata):
            return tuple(leaf.names) if hasattr(leaf, "names") else None
        return None if leaf.ndim == 0 else (None,) * leaf.ndim

    return jax.tree_util.tree_map(axes, boxed, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


# ---------------------------------------------------------------------------------------------
# Execution options: the same weights run scanned or unrolled, rematerialised, in another dtype.

EXECUTION_OPTIONS = ("scan_layers", "remat_policy", "dtype", "attention_impl")


stack_layers, unstack_layers = llama.stack_layers, llama.unstack_layers


def with_execution_options(params, config: JanusConfig, **options):
    """(params, config) running the same weights with other `EXECUTION_OPTIONS` of the language
    model: a checkpoint saved unrolled in float32 can train scanned with remat in bfloat16, and
    back. Layers are restacked when scan_layers changes; unset options keep the checkpoint's."""
    unknown = sorted(set(options) - set(EXECUTION_OPTIONS))
    if unknown:
        raise UserError(f"unknown execution option(s) {unknown}; choose from {EXECUTION_OPTIONS}")
    text = dataclasses.replace(config.text, **options)  # validates attention_impl, remat
    if text.scan_layers != config.text.scan_layers:
        convert = stack_layers if text.scan_layers else unstack_layers
        params = dict(params, language_model=convert(params["language_model"],
                                                     text.num_hidden_layers))
    return params, config.replace(text=text)


# ---------------------------------------------------------------------------------------------
# Forward functions.

def embed_text(params, config: JanusConfig, ids_bl):
    """Token embeddings [B, L, D] (float32 unless config.text.dtype says otherwise)."""
    return _language_model(config).apply({"params": params["language_model"]}, ids_bl,
                                         method=llama.LlamaModel.embed)


def embed_image_codes(params, config: JanusConfig, codes_bl, index_bl=None):
    """VQ codes -> generation_embeddings -> generation_aligner: LLM inputs [B, L, D].

    index_bl: each code's index in its image's raster order (default 0..L-1: a whole image, or
    its first L codes); read only with config.image_position_embeddings."""
    e = _generation_embeddings(config).apply({"params": params["generation_embeddings"]}, codes_bl)
    e = parallel.constrain(e, llama.ACT_BLD)
    out = _generation_aligner(config).apply({"params": params["generation_aligner"]}, e)
    if config.image_position_embeddings:
        if index_bl is None:
            index_bl = jnp.broadcast_to(jnp.arange(codes_bl.shape[-1]), codes_bl.shape)
        pos = _image_positions(config).apply({"params": params["image_positions"]}, index_bl)
        out = out + pos.astype(out.dtype)
    return out


def codebook_embeddings(params):
    """[num_embeddings, embed_dim]: the VQ codebook's l2-normalised rows scaled to the norm of
    the generation embeddings' N(0, 1) init (sqrt(embed_dim)), a generation-embedding init in
    which codes that decode to similar patches start close together."""
    codebook = params["vqmodel"]["codebook"]
    return vq_lib.l2_normalize(codebook.astype(jnp.float32)) * jnp.sqrt(codebook.shape[1])


def embed_understanding_images(params, config: JanusConfig, pixels_bhwc):
    """Pixels in [-1, 1] -> SigLIP tower -> aligner: [B, N, D], N = vision num_image_tokens."""
    feats = vision_module(config).apply({"params": params["vision_model"]}, pixels_bhwc)
    return _aligner(config).apply({"params": params["aligner"]}, feats)


def understanding_embeds(params, config: JanusConfig, pixels_bhwc=None, codes_bn=None):
    """Embeddings [B, N, D] for the image placeholders of an understanding prompt, N =
    config.num_understanding_tokens. 'siglip' reads pixels in [-1, 1]; 'vq_codes' reads VQ codes
    (pixels are VQ-encoded first, at vq.image_size) through the generation embeddings."""
    if config.understanding_input == "siglip":
        if pixels_bhwc is None:
            raise UserError("a SigLIP understanding path needs pixels, not VQ codes; decode the "
                            "codes first (janus.vq_decode)")
        return embed_understanding_images(params, config, pixels_bhwc)
    if codes_bn is None:
        codes_bn = vq_encode(params, config, pixels_bhwc)
    return embed_image_codes(params, config, codes_bn)


def merge_image_embeds(emb_bld, ids_bl, image_emb_bnd, image_token_id):
    """Replace the rows where ids == image_token_id by image embeddings, in reading order.

    The k-th placeholder of a row takes image_emb_bnd[b, k]; a row with fewer placeholders than N
    uses the first ones; extra placeholders beyond N keep index N-1 (callers keep counts equal).
    """
    is_img_bl = ids_bl == image_token_id
    idx_bl = jnp.clip(jnp.cumsum(is_img_bl, axis=1) - 1, 0, image_emb_bnd.shape[1] - 1)
    gathered = jnp.take_along_axis(image_emb_bnd, idx_bl[:, :, None], axis=1)
    return jnp.where(is_img_bl[:, :, None], gathered.astype(emb_bld.dtype), emb_bld)


def init_cache(config: JanusConfig, batch: int, max_len: int, dtype=jnp.float32):
    """Zero KV cache {'k','v'} of max_len slots (layouts: llama.init_cache)."""
    return llama.init_cache(config.text, batch, max_len, dtype)


def decode(params, config: JanusConfig, emb_bld, positions_bl, kv_mask_bs, cache=None, cache_index=0,
           segment_ids_bl=None, causal_only: bool = False):
    """Run the LLM on embeddings. Returns (final-normed hidden [B, L, D], cache).

    No cache: causal attention over the L inputs, keys masked by kv_mask_bs [B, L].
    With cache: K/V of the inputs go to slots [cache_index, cache_index + L); query i attends to
    slots j <= cache_index + i with kv_mask_bs[:, j] true (kv_mask_bs is [B, max_len]).
    Left-padded prompts: kv_mask = attention_mask, positions = clip(cumsum(mask) - 1, 0).
    Packed rows (training, no cache): segment_ids_bl [B, L] keeps attention inside each sequence;
    positions restart at 0 per sequence.
    causal_only (no cache, no segments): every row is one sequence, right-padded, so the causal
    mask alone is exact for every real query (padding queries then also see earlier padding,
    which changes only outputs nobody reads); kv_mask_bs is not consulted. This lets cuDNN
    attention run without a mask bias (and its gradient).
    """
    _check_decode_shapes(config, emb_bld, positions_bl, kv_mask_bs, cache, cache_index)
    if segment_ids_bl is not None and cache is not None:
        raise UserError("decode: segment_ids_bl (packed rows) is for training without a cache")
    if causal_only and (cache is not None or segment_ids_bl is not None):
        raise UserError("decode: causal_only is for unpacked training rows (no cache, no "
                        "segment_ids_bl)")
    return _language_model(config).apply({"params": params["language_model"]}, emb_bld,
                                         positions_bl, kv_mask_bs, cache, cache_index,
                                         segment_ids_bl, causal_only)


def _check_decode_shapes(config, emb_bld, positions_bl, kv_mask_bs, cache, cache_index):
    """Shape mistakes raise one clear UserError here instead of a broadcasting error deep inside."""
    b, l, d = emb_bld.shape
    if d != config.text.hidden_size:
        raise UserError(f"decode: embeddings have width {d} but the model's hidden_size is "
                        f"{config.text.hidden_size}; embed with embed_text / embed_image_codes.")
    if tuple(positions_bl.shape) not in ((b, l), (1, l)):
        raise UserError(f"decode: positions_bl has shape {tuple(positions_bl.shape)}, expected "
                        f"{(b, l)} (one position per input embedding).")
    slots = l if cache is None else llama.cache_length(cache)
    if tuple(kv_mask_bs.shape) not in ((b, slots), (1, slots)):
        what = "the input length" if cache is None else "the cache length (max_len)"
        raise UserError(f"decode: kv_mask_bs has shape {tuple(kv_mask_bs.shape)}, expected "
                        f"{(b, slots)}: [batch, {what}].")
    if cache is not None and isinstance(cache_index, int) and cache_index + l > slots:
        raise PromptTooLongError(f"decode: writing {l} positions at cache slot {cache_index} "
                                 f"overflows the cache of {slots} slots; allocate init_cache with a "
                                 "larger max_len or shorten the prompt.")


def text_logits(params, config: JanusConfig, hidden_bld):
    """lm_head: [B, L, vocab]."""
    logits = _lm_head(config).apply({"params": params["lm_head"]}, hidden_bld)
    return parallel.constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))


def image_logits(params, config: JanusConfig, hidden_bld):
    """generation_head: [B, L, num_embeddings]."""
    logits = _generation_head(config).apply({"params": params["generation_head"]}, hidden_bld)
    return parallel.constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))


def vq_encode(params, config: JanusConfig, pixels_bhwc):
    """Pixels in [-1, 1] [B, H, W, 3] -> codes [B, grid*grid] int32, row-major."""
    return vq_module(config).apply({"params": params["vqmodel"]}, pixels_bhwc,
                                   method=vq_lib.VQModel.encode)


def vq_decode(params, config: JanusConfig, codes_bn):
    """Codes [B, grid*grid] -> pixels [B, H, W, 3] float32 in about [-1, 1]."""
    return vq_module(config).apply({"params": params["vqmodel"]}, codes_bn,
                                   method=vq_lib.VQModel.decode)
