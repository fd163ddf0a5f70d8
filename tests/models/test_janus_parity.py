"""Parity of the Flax Janus model against transformers' JanusForConditionalGeneration (PyTorch).

The HF model is the tiny random one of tests/conftest.py (GQA 4/2 heads, 2 layers, VQ with two
resolution levels), converted with jaxgen.convert.hf.import_hf_dir. Tolerance: 1e-4 absolute in
float32 on every path (text, image generation, understanding with pixels, VQ decode), and exact
codes for VQ encode and greedy CFG image generation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxgen.convert.hf import import_hf_dir
from jaxgen.models import janus
from third_party.hf_janus import tiny_janus_config

ATOL = 1e-4
BATCH = 2


@pytest.fixture(scope="module")
def converted(hf_tiny_dir):
    params, config, tokenizer = import_hf_dir(hf_tiny_dir)
    return params, config, tokenizer


decode = jax.jit(janus.decode, static_argnums=1)
text_logits = jax.jit(janus.text_logits, static_argnums=1)
image_logits = jax.jit(janus.image_logits, static_argnums=1)
embed_text = jax.jit(janus.embed_text, static_argnums=1)
embed_image_codes = jax.jit(janus.embed_image_codes, static_argnums=1)
embed_understanding = jax.jit(janus.embed_understanding_images, static_argnums=1)
vq_encode = jax.jit(janus.vq_encode, static_argnums=1)
vq_decode = jax.jit(janus.vq_decode, static_argnums=1)


def _full_positions(b, l):
    return jnp.tile(jnp.arange(l), (b, 1))


def _text_ids(config, length, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config.image_token_id, size=(BATCH, length))  # plain text tokens
    ids[:, 0] = config.bos_token_id
    return ids


def test_config_matches_tiny_config(converted):
    _, config, tokenizer = converted
    assert config == tiny_janus_config()
    assert tokenizer is not None and tokenizer.convert_tokens_to_ids("<begin_of_image>") == config.boi_token_id


def test_text_logits_match(converted, hf_tiny_model):
    params, config, _ = converted
    ids = _text_ids(config, 9, seed=1)
    with torch.no_grad():
        ref = hf_tiny_model(input_ids=torch.from_numpy(ids)).logits.numpy()
    ids_j = jnp.asarray(ids, jnp.int32)
    hidden, _ = decode(params, config, embed_text(params, config, ids_j),
                       _full_positions(*ids.shape), jnp.ones(ids.shape, bool))
    out = np.asarray(text_logits(params, config, hidden))
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=0)


def test_left_padded_text_logits_match(converted, hf_tiny_model):
    params, config, _ = converted
    ids = _text_ids(config, 8, seed=2)
    mask = np.ones_like(ids)
    mask[0, :3] = 0  # row 0 is left-padded
    ids[0, :3] = config.pad_token_id
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    with torch.no_grad():
        ref = hf_tiny_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                            position_ids=torch.from_numpy(positions)).logits.numpy()
    hidden, _ = decode(params, config, embed_text(params, config, jnp.asarray(ids)),
                       jnp.asarray(positions), jnp.asarray(mask, bool))
    out = np.asarray(text_logits(params, config, hidden))
    valid = mask.astype(bool)  # HF's values at padded query rows are arbitrary
    np.testing.assert_allclose(out[valid], ref[valid], atol=ATOL, rtol=0)


def test_image_generation_logits_match(converted, hf_tiny_model):
    """Prompt tokens then image codes (generation_embeddings -> aligner), generation_head logits."""
    params, config, _ = converted
    ids = _text_ids(config, 5, seed=3)
    ids[:, -1] = config.boi_token_id
    codes = np.random.default_rng(4).integers(0, config.vq.num_embeddings, size=(BATCH, 6))
    with torch.no_grad():
        text_emb = hf_tiny_model.get_input_embeddings()(torch.from_numpy(ids))
        img_emb = hf_tiny_model.prepare_embeddings_for_image_generation(torch.from_numpy(codes))
        emb = torch.cat([text_emb, img_emb], dim=1)
        hidden = hf_tiny_model.model.language_model(inputs_embeds=emb).last_hidden_state
        ref = hf_tiny_model.model.generation_head(hidden).numpy()
        ref_img_emb = img_emb.numpy()
    mine_img_emb = embed_image_codes(params, config, jnp.asarray(codes, jnp.int32))
    np.testing.assert_allclose(np.asarray(mine_img_emb), ref_img_emb, atol=ATOL, rtol=0)
    emb_j = jnp.concatenate([embed_text(params, config, jnp.asarray(ids)), mine_img_emb], axis=1)
    b, l = emb_j.shape[:2]
    hidden_j, _ = decode(params, config, emb_j, _full_positions(b, l), jnp.ones((b, l), bool))
    out = np.asarray(image_logits(params, config, hidden_j))
    assert out.shape == (BATCH, l, config.vq.num_embeddings)
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=0)


def test_understanding_logits_with_image_match(converted, hf_tiny_model):
    params, config, _ = converted
    n = config.vision.num_image_tokens
    prefix = _text_ids(config, 3, seed=5)
    suffix = _text_ids(config, 4, seed=6)[:, 1:]
    image_part = np.concatenate([
        np.full((BATCH, 1), config.boi_token_id), np.full((BATCH, n), config.image_token_id),
        np.full((BATCH, 1), config.eoi_token_id)], axis=1)
    ids = np.concatenate([prefix, image_part, suffix], axis=1)
    size = config.vision.image_size
    pixels = np.random.default_rng(7).uniform(-1, 1, size=(BATCH, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        ref = hf_tiny_model(input_ids=torch.from_numpy(ids),
                            pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2))).logits.numpy()
    emb = embed_text(params, config, jnp.asarray(ids))
    img = embed_understanding(params, config, jnp.asarray(pixels))
    assert img.shape == (BATCH, n, config.text.hidden_size)
    emb = janus.merge_image_embeds(emb, jnp.asarray(ids), img, config.image_token_id)
    hidden, _ = decode(params, config, emb, _full_positions(*ids.shape), jnp.ones(ids.shape, bool))
    out = np.asarray(text_logits(params, config, hidden))
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=0)


def test_vq_decode_pixels_match(converted, hf_tiny_model):
    params, config, _ = converted
    codes = np.random.default_rng(8).integers(0, config.vq.num_embeddings,
                                              size=(BATCH, config.num_image_tokens))
    with torch.no_grad():
        ref = hf_tiny_model.decode_image_tokens(torch.from_numpy(codes)).numpy()  # [B, H, W, C]
    out = np.asarray(vq_decode(params, config, jnp.asarray(codes, jnp.int32)))
    assert out.shape == ref.shape == (BATCH, config.vq.image_size, config.vq.image_size, 3)
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=0)


def test_vq_encode_codes_match(converted, hf_tiny_model):
    params, config, _ = converted
    size = config.vq.image_size
    pixels = np.random.default_rng(9).uniform(-1, 1, size=(BATCH, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        out_hf = hf_tiny_model.model.vqmodel.encode(torch.from_numpy(pixels.transpose(0, 3, 1, 2)))
    ref = out_hf.image_tokens.numpy().reshape(BATCH, -1)
    out = np.asarray(vq_encode(params, config, jnp.asarray(pixels)))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, ref)


def test_greedy_cfg_image_generation_matches_hf_generate(converted, hf_tiny_model):
    """KV-cached decoding + CFG (HF stacks [cond; uncond], uncond keeps only BOS/BOI) reproduces
    HF `generate(generation_mode='image', do_sample=False)` token for token."""
    params, config, _ = converted
    cfg_weight = 5.0
    ids = _text_ids(config, 6, seed=10)
    ids[:, -1] = config.boi_token_id
    with torch.no_grad():
        ref = hf_tiny_model.generate(
            torch.from_numpy(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
            generation_mode="image", do_sample=False, guidance_scale=cfg_weight).numpy()
    uncond = np.where((ids == config.bos_token_id) | (ids == config.boi_token_id), ids,
                      config.pad_token_id)
    both = jnp.asarray(np.concatenate([ids, uncond]), jnp.int32)
    b2, l = both.shape
    n = config.num_image_tokens
    max_len = l + n
    kv_mask = jnp.ones((b2, max_len), bool)
    cache = janus.init_cache(config, b2, max_len)
    hidden, cache = decode(params, config, embed_text(params, config, both),
                           _full_positions(b2, l), kv_mask, cache, 0)
    tokens = []
    for i in range(n):
        logits = image_logits(params, config, hidden[:, -1:])[:, 0]
        cond, unc = logits[:BATCH], logits[BATCH:]
        nxt = jnp.argmax(unc + cfg_weight * (cond - unc), axis=-1).astype(jnp.int32)
        tokens.append(np.asarray(nxt))
        emb = embed_image_codes(params, config, jnp.concatenate([nxt, nxt])[:, None])
        hidden, cache = decode(params, config, emb, jnp.full((b2, 1), l + i), kv_mask, cache, l + i)
    np.testing.assert_array_equal(np.stack(tokens, axis=1), ref)
