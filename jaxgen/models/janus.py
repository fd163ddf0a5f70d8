"""Janus-Pro unified model as pure functions of a plain params pytree (work in progress).

Functional API (binding contract; `config` is a frozen, hashable JanusConfig, static under jit):

    init_params(config, rng) -> params
    param_logical_axes(config) -> pytree like params, leaves = tuple of logical axis names
    embed_text(params, config, ids_bl) -> f32[B,L,D]
    embed_image_codes(params, config, codes_bl) -> [B,L,D]
    embed_understanding_images(params, config, pixels_bhwc in [-1,1]) -> [B,N,D]
    merge_image_embeds(emb_bld, ids_bl, image_emb_bnd, image_token_id) -> emb_bld
    init_cache(config, batch, max_len, dtype=jnp.float32) -> {'k','v'}: [layers,B,max_len,kv_heads,head_dim]
    decode(params, config, emb_bld, positions_bl, kv_mask_bs, cache=None, cache_index=0)
        -> (hidden_bld, cache)
    text_logits(params, config, hidden_bld) -> [B,L,vocab]
    image_logits(params, config, hidden_bld) -> [B,L,num_embeddings]
    vq_encode(params, config, pixels_bhwc in [-1,1]) -> codes_bn int32 (row-major grid)
    vq_decode(params, config, codes_bn) -> pixels_bhwc f32 in ~[-1,1]
    config_from_configdict(cd) -> JanusConfig

Top-level param keys mirror Hugging Face: 'language_model', 'lm_head', 'vision_model', 'aligner',
'vqmodel', 'generation_embeddings', 'generation_aligner', 'generation_head'.
"""
