"""Qwen2.5-VL (the reward VLM of ReasonGen-R1 and GoT-R1) in Flax Linen, equal to transformers'
`Qwen2_5_VLForConditionalGeneration` (tests/models/test_qwen2_5_vl_parity.py, float32, 1e-4).

Functional API (`config` a frozen Qwen2_5_VLConfig, static under jit; `grid_thw` a static tuple
((t, h, w), ...) of each image's grid in patches, in the order of pixel_values):

    init_params(config, rng) -> params;  param_shapes(config);  param_logical_axes(config)
    with_execution_options(params, config, scan_layers=, remat_policy=, dtype=, param_dtype=)
    image_features(params, config, pixel_values [N, C*T*P*P], grid_thw) -> [N / m^2, D]
    embed_tokens(params, config, ids_bl) -> [B, L, D]
    merge_image_features(emb_bld, ids_bl, features_md, image_token_id) -> [B, L, D]
    rope_positions(config, ids_bl, mask_bl, grid_thw) -> (M-RoPE positions [3, B, L], next [B])
    check_image_tokens(config, ids_bl, grid_thw)            host-side check, UserError
    init_cache(config, batch, max_len, dtype) -> {'k', 'v'} (llama.init_cache layouts)
    decode(params, config, emb_bld, positions_3bl, kv_mask_bs, cache=None, cache_index=0)
        -> (hidden [B, L, D], cache)
    logits(params, config, hidden_bld) -> [B, L, vocab]
    forward(params, config, ids_bl, mask_bl, pixel_values=None, grid_thw=()) -> [B, L, vocab]
    generate(params, config, ids_bl, mask_bl, pixel_values, rng, temperature=0.0,
             eos_ids=None, *, grid_thw=(), max_new_tokens=16) -> tokens [B, T]   (jitted)

Import from a Hugging Face directory: jaxgen/convert/qwen2_5_vl.py. Images only: videos
(temporal M-RoPE spacing by second_per_grid_ts) are not implemented.
"""

from jaxgen.models.qwen2_5_vl.config import Qwen2_5_VLConfig, TextConfig, VisionConfig
from jaxgen.models.qwen2_5_vl.model import (
    EXECUTION_OPTIONS, check_image_tokens, decode, embed_tokens, forward, generate,
    image_features, init_cache, init_params, logits, merge_image_features, param_logical_axes,
    param_shapes, prefill_inputs, rope_positions, stack_layers, unstack_layers,
    with_execution_options)
from jaxgen.models.qwen2_5_vl.vision import normalize_grid, vision_plan

__all__ = [
    "Qwen2_5_VLConfig", "TextConfig", "VisionConfig", "EXECUTION_OPTIONS", "check_image_tokens",
    "decode", "embed_tokens", "forward", "generate", "image_features", "init_cache",
    "init_params", "logits", "merge_image_features", "param_logical_axes", "param_shapes",
    "prefill_inputs", "rope_positions", "stack_layers", "unstack_layers",
    "with_execution_options", "normalize_grid", "vision_plan",
]
