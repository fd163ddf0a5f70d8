"""Public API: generation from prompt strings / token ids, reasoning text, errors, checkpoint
save/load and Hugging Face export round trips (all on the tiny random HF fixture model)."""

import json

import jax
import numpy as np
import pytest

import jaxgen
from jaxgen import api
from jaxgen.data.templates import generation_prompt
from jaxgen.errors import CheckpointError, PromptTooLongError, UserError
from jaxgen.models import janus
from tests.helpers.hf_reference import hf_greedy_image_tokens, with_begin_of_image

PROMPTS = ["w10 w11 w12", "w13"]
THINK = 4


@pytest.fixture(scope="module")
def gen(hf_tiny_dir):
    return jaxgen.load(hf_tiny_dir)


@pytest.fixture(scope="module")
def greedy_samples(gen):
    return gen.generate(PROMPTS, greedy=True, num_samples=2, return_rollout=True)


def _tokens(samples):
    return np.stack([s.image_tokens for s in samples])


def test_generate_from_prompt_strings(gen, greedy_samples):
    samples, rollout = greedy_samples
    cfg = gen.config
    side = cfg.vq.image_size
    assert [s.prompt for s in samples] == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    for s in samples:
        assert s.image.shape == (side, side, 3) and s.image.dtype == np.uint8
        assert s.image_tokens.shape == (cfg.num_image_tokens,) and s.image_tokens.dtype == np.int32
        assert s.reasoning == ""
    tokens = _tokens(samples)
    np.testing.assert_array_equal(tokens[0], tokens[1])  # greedy: same prompt, same image
    assert not np.array_equal(tokens[0], tokens[2])
    # Images are the VQ decoding of the tokens, mapped to uint8 as Hugging Face does.
    pixels = np.asarray(janus.vq_decode(gen.params, cfg, tokens))
    np.testing.assert_array_equal(np.stack([s.image for s in samples]),
                                  np.clip((pixels + 1) * 127.5, 0, 255).astype(np.uint8))
    # Prompts are templated, BOS-prefixed and left padded.
    ids, mask = np.asarray(rollout.prompt_ids_bl), np.asarray(rollout.prompt_mask_bl)
    want = gen.tokenizer(generation_prompt(PROMPTS[1], gen.tokenizer.bos_token),
                         add_special_tokens=False)["input_ids"]
    assert ids[2][mask[2]].tolist() == want and want[0] == cfg.bos_token_id


def test_pretokenised_input_ids_give_the_same_images(gen, greedy_samples):
    samples, _ = greedy_samples
    rows = [gen.tokenizer(generation_prompt(p, gen.tokenizer.bos_token),
                          add_special_tokens=False)["input_ids"] for p in PROMPTS]
    width = max(map(len, rows))
    ids = np.full((2, width), gen.config.pad_token_id)
    mask = np.zeros((2, width), int)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
    again = gen.generate(input_ids=ids, attention_mask=mask, greedy=True, num_samples=2)
    np.testing.assert_array_equal(_tokens(again), _tokens(samples))
    assert again[2].prompt == gen.tokenizer.decode(rows[1], skip_special_tokens=True)


def test_processor_style_ids_ending_with_begin_of_image_match_hugging_face(gen, hf_tiny_model):
    """JanusProcessor(..., generation_mode="image") ends its prompts with <begin_of_image>: it is
    recognised, not doubled, and the greedy CFG image equals transformers' on the same ids."""
    cfg = gen.config
    rows = [gen.tokenizer(generation_prompt(p, gen.tokenizer.bos_token),
                          add_special_tokens=False)["input_ids"] for p in PROMPTS[:1]]
    ids = with_begin_of_image(np.asarray(rows), cfg)
    want = hf_greedy_image_tokens(hf_tiny_model, cfg, ids, 5.0)
    got = gen.generate(input_ids=ids, greedy=True, cfg_weight=5.0)
    np.testing.assert_array_equal(_tokens(got), want)
    without = gen.generate(input_ids=ids[:, :-1], greedy=True, cfg_weight=5.0)
    np.testing.assert_array_equal(_tokens(without), want)
    mixed = np.concatenate([ids, np.concatenate([[[cfg.pad_token_id]], ids[:, :-1]], 1)])
    with pytest.raises(UserError, match="some input_ids rows end with <begin_of_image>"):
        gen.generate(input_ids=mixed, attention_mask=mixed != cfg.pad_token_id)


def test_think_writes_decodable_reasoning(gen):
    samples, rollout = gen.generate(PROMPTS, greedy=True, num_samples=2, think=True,
                                    max_think_tokens=THINK, return_rollout=True)
    think = np.asarray(rollout.think_ids_bt)
    keep = np.asarray(rollout.think_mask_bt)
    assert think.shape == (4, THINK)
    assert keep.any()
    for i, s in enumerate(samples):
        kept = think[i][keep[i]].tolist()
        assert s.reasoning == gen.tokenizer.decode(kept, skip_special_tokens=False)
        assert len(s.reasoning.split()) == len(kept)  # word-level tokenizer: one word per token


def test_prompt_too_long(gen):
    limit = gen.config.text.max_position_embeddings
    with pytest.raises(PromptTooLongError, match=f"context of {limit}"):
        gen.generate(" ".join(["w7"] * limit))
    with pytest.raises(PromptTooLongError, match="max_think_tokens"):
        gen.generate("w7", think=True, max_think_tokens=limit)


def test_missing_or_wrong_directories(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        jaxgen.load(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not a model directory"):
        jaxgen.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="not Janus"):
        jaxgen.load(tmp_path)
    with pytest.raises(CheckpointError, match="params.safetensors"):
        api.load_checkpoint(tmp_path)


def test_generate_needs_a_tokenizer_for_strings(gen):
    bare = api.Generator(gen.params, gen.config, tokenizer=None)
    with pytest.raises(UserError, match="no tokenizer"):
        bare.generate("w1")
    with pytest.raises(UserError, match="exactly one"):
        gen.generate()


def test_checkpoint_round_trip(gen, greedy_samples, tmp_path):
    ckpt = gen.save(tmp_path / "ckpt")
    assert {"config.json", "params.safetensors", "tokenizer.json"} <= {p.name for p in ckpt.iterdir()}
    loaded = jaxgen.load(ckpt)
    assert loaded.config == gen.config
    flat_a, tree_a = jax.tree_util.tree_flatten(gen.params)
    flat_b, tree_b = jax.tree_util.tree_flatten(loaded.params)
    assert tree_a == tree_b
    for a, b in zip(flat_a, flat_b):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    again = loaded.generate(PROMPTS, greedy=True, num_samples=2)
    np.testing.assert_array_equal(_tokens(again), _tokens(greedy_samples[0]))
    # A config that does not match the tensors is reported, naming the mismatch.
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["text"]["intermediate_size"] += 1
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        api.load_checkpoint(ckpt)


def test_export_round_trip_keeps_greedy_tokens(gen, greedy_samples, tmp_path):
    out = gen.export_hf(tmp_path / "hf")
    reimported = jaxgen.load(out)
    assert reimported.config == gen.config
    again = reimported.generate(PROMPTS, greedy=True, num_samples=2)
    np.testing.assert_array_equal(_tokens(again), _tokens(greedy_samples[0]))
