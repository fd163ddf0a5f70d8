"""VLM-judge rewards on a tiny random unified model: P(yes) against a hand-assembled forward
pass, in-graph VQ decoding against the host path, cached greedy answers against uncached ones."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.data import templates
from jaxgen.errors import PromptTooLongError
from jaxgen.models import janus
from jaxgen.rewards import CompositeReward, RewardBatch, RewardContext, make_reward
from jaxgen.sampling import understanding
from tests.helpers.tiny_judge import codes_and_host_images, decoding_context, row_logits

# `tiny`: (config, params, tokenizer, judge) of the tiny random model, tests/rewards/conftest.py


def _last_probs(params, config, ids, pixels):
    return jax.nn.softmax(row_logits(params, config, ids, pixels)[-1])


def _manual_prob(params, config, tok, question, pixels):
    """Unpadded single-row forward pass, softmax written out."""
    text = templates.understanding_prompt(question, "<bos>", config.vision.num_image_tokens)
    ids = jnp.asarray([tok.encode(text, add_special_tokens=False)], jnp.int32)
    p = np.asarray(_last_probs(params, config, ids, pixels), np.float64)
    yes = sum(p[i] for i in set(tok.encode(w, add_special_tokens=False)[0]
                                for w in ("yes", "Yes", " yes", " Yes")))
    no = sum(p[i] for i in set(tok.encode(w, add_special_tokens=False)[0]
                               for w in ("no", "No", " no", " No")))
    return yes / (yes + no)


def test_yes_probability_matches_manual(tiny):
    config, params, tok, judge = tiny
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    questions = ["a red circle ?", "the blue square left of a green triangle ?", "yes"]
    got = np.asarray(judge.prob_yes(questions, images=images))
    for i in range(3):
        want = _manual_prob(params, config, tok, questions[i], jnp.asarray(images[i]) / 127.5 - 1)
        np.testing.assert_allclose(got[i], want, rtol=2e-5, atol=1e-6)
    assert np.all((got > 0) & (got < 1))


def test_codes_decoded_in_graph_match_host_images(tiny):
    """The judge sees on device exactly the pixels of the saved uint8 image (checked bitwise),
    and scores them alike: the two are differently fused float32 graphs of the whole judge,
    whose P(yes) agree to float32 summation-order error (XLA's order differs between CPUs:
    1.5e-5 on one 2-core host, under 5e-6 on another)."""
    config, params, tok, judge = tiny
    codes, host = codes_and_host_images(params, config, 1)
    in_graph = jax.jit(lambda c: understanding.quantise_pixels(janus.vq_decode(params, config, c)))
    seen = np.round((np.asarray(in_graph(codes)) + 1.0) * 127.5).astype(np.uint8)
    np.testing.assert_array_equal(seen, host)
    q = ["a red circle ?", "a blue square ?"]
    on_device = judge.prob_yes(q, codes=codes, decoder=(params, config))
    np.testing.assert_allclose(np.asarray(on_device), np.asarray(judge.prob_yes(q, images=host)),
                               rtol=0, atol=5e-5)


def test_greedy_answer_matches_uncached_argmax(tiny):
    config, params, tok, judge = tiny
    images = np.random.default_rng(2).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    ids, mask = judge.tokenize(["a red circle ?", "the blue square ?"], with_image=True)
    pixels = understanding.uint8_to_unit(images)
    steps = 4
    out = np.asarray(understanding.greedy_answer(params, config, ids, mask, pixels, steps))
    emb0, _ = understanding.prompt_state(params, config, ids, mask, pixels)
    seq_ids, seq_mask, emb = ids, mask, emb0

    @jax.jit
    def uncached_next(emb, seq_mask):
        pos = jnp.maximum(jnp.cumsum(seq_mask, 1) - 1, 0)
        hidden, _ = janus.decode(params, config, emb, pos, seq_mask.astype(bool))
        return jnp.argmax(janus.text_logits(params, config, hidden[:, -1:])[:, 0], -1)

    for t in range(steps):
        nxt = uncached_next(emb, seq_mask)
        np.testing.assert_array_equal(out[:, t], np.asarray(nxt))
        emb = jnp.concatenate([emb, janus.embed_text(params, config, nxt[:, None])], 1)
        seq_mask = jnp.concatenate([seq_mask, jnp.ones((2, 1), seq_mask.dtype)], 1)


def test_registered_rewards_and_composition(tiny):
    config, params, tok, judge = tiny
    ctx = RewardContext(judges={"tiny": judge})
    rng = np.random.default_rng(3)
    batch = RewardBatch(prompts=["a red circle", "a blue square"],
                        reasoning=["<obj>red circle</obj> <box>(0,0),(500,500)</box>", "x"],
                        metadata=[{}, {}],
                        images=rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    r_pi = make_reward("got_prompt_image", ctx, judge="tiny")(batch)
    r_sem = make_reward("got_semantic", ctx, judge="tiny")(batch)
    r_spa = make_reward("got_spatial", ctx, judge="tiny")(batch)
    spec = {"op": "product", "terms": [
        {"name": "got_prompt_image", "kwargs": {"judge": "tiny"}},
        {"op": "sum", "terms": [{"name": "got_semantic", "kwargs": {"judge": "tiny"}},
                                {"name": "got_spatial", "kwargs": {"judge": "tiny"}}]},
        {"name": "constant", "kwargs": {"value": 0.5}}]}
    total, streams, _ = CompositeReward(spec, ctx)(batch)
    np.testing.assert_allclose(total, np.asarray(r_pi) * (np.asarray(r_sem) + np.asarray(r_spa))
                               * 0.5, rtol=1e-5)
    assert streams.shape == (2, 1)
    boxed = make_reward("vlm_boxed", ctx, judge="tiny", max_new_tokens=3)(batch)
    assert set(np.asarray(boxed).tolist()) <= {0.0, 1.0}


def test_question_too_long(tiny):
    _, _, _, judge = tiny
    with pytest.raises(PromptTooLongError, match="max_text_tokens"):
        judge.prob_yes(["a " * 100], images=np.zeros((1, 16, 16, 3), np.uint8))


def test_vq_codes_judge_matches_the_training_rows(tiny):
    """A judge that reads images as its VQ codes (understanding_input='vq_codes'): P(yes) from the
    reward path (pixels -> in-graph VQ encode -> generation embeddings at the placeholders, left
    padded) equals the teacher-forced probabilities of the SFT understanding row that holds the
    same codes inline."""
    from jaxgen.train import sft_loss, sft_rows
    config, params, tok, _ = tiny
    config = config.replace(understanding_input="vq_codes")
    judge = understanding.VLMJudge(params, config, tok, max_text_tokens=64)
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (2, config.vq.image_size, config.vq.image_size, 3), np.uint8)
    questions = ["a red circle ?", "the blue square left of a green triangle ?"]
    got = np.asarray(judge.prob_yes(questions, images=images))
    codes = np.asarray(janus.vq_encode(params, config, jnp.asarray(images) / 127.5 - 1.0))
    yes_id, no_id = judge.yes_ids, judge.no_ids
    for i, q in enumerate(questions):
        row = sft_rows.understanding_row(tok, config, q, "yes", 160, codes[i])
        assert row["input_is_image"].sum() == config.num_understanding_tokens
        batch = {k: jnp.asarray(row[k])[None] for k in ("inputs", "input_is_image", "valid")}
        text_lg, _ = sft_loss.forward_logits(params, config, batch)
        last = int(np.argmax(row["target_kind"] == sft_rows.KIND_ANSWER))  # first answer target
        p = np.asarray(jax.nn.softmax(text_lg[0, last]), np.float64)
        want = p[list(yes_id)].sum() / (p[list(yes_id)].sum() + p[list(no_id)].sum())
        np.testing.assert_allclose(got[i], want, rtol=2e-5, atol=1e-6)


def test_jaxgen_only_options_are_validated_and_not_exported_to_hf(tiny):
    from jaxgen.convert import hf
    from jaxgen.models.config import ConfigError
    config = tiny[0]
    with pytest.raises(ConfigError, match="understanding_input"):
        config.replace(understanding_input="clip")
    with pytest.raises(ConfigError, match="Hugging Face Janus"):
        hf.jaxgen_config_to_hf(config.replace(understanding_input="vq_codes"))
    with pytest.raises(ConfigError, match="encoder_attention"):
        vq = dataclasses.replace(config.vq, encoder_attention=False)
        hf.jaxgen_config_to_hf(config.replace(vq=vq))
    conv_stem = config.replace(vision=dataclasses.replace(config.vision, stem="conv"))
    with pytest.raises(ConfigError, match="vision.stem='conv'"):
        hf.jaxgen_config_to_hf(conv_stem)
    assert hf.hf_compatible(conv_stem).vision.stem == "patch"


def _manual_answer_logprob(params, config, tok, question, answer, image_uint8):
    """Unpadded single row: understanding prompt + answer + <eos>, log-softmax in NumPy float64."""
    text = templates.understanding_prompt(question, "<bos>", config.vision.num_image_tokens)
    prompt = tok.encode(text, add_special_tokens=False)
    ans = tok.encode(answer, add_special_tokens=False) + [config.eos_token_id]
    ids = jnp.asarray([prompt + ans], jnp.int32)
    logits = np.asarray(row_logits(params, config, ids, jnp.asarray(image_uint8) / 127.5 - 1),
                        np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    return sum(logp[len(prompt) - 1 + t, a] for t, a in enumerate(ans)), len(ans)


def test_caption_reward_matches_manual_log_likelihoods(tiny):
    """vlm_caption = mean over the prompt's tokens (+ <eos>) of log p(token | image) - log p(token |
    blank image), checked against unpadded single-row forward passes; a blank image scores 0."""
    from jaxgen.data import judge as judge_data
    config, params, tok, judge = tiny
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    prompts = ["a red circle", "two blue squares left of a green triangle", "a cyan circle"]
    question = judge_data.DESCRIBE_QUESTION
    total, length = judge.answer_logprob([question] * 3, prompts, images=images,
                                         max_answer_tokens=48)
    blank = judge_data.blank_image(16)
    ctx = RewardContext(judges={"tiny": judge})
    batch = RewardBatch(prompts=prompts, reasoning=[""] * 3, metadata=[{}] * 3, images=images)
    reward = np.asarray(make_reward("vlm_caption", ctx, judge="tiny")(batch))
    no_prior = np.asarray(make_reward("vlm_caption", ctx, judge="tiny", baseline="none")(batch))
    for i in range(3):
        want, n = _manual_answer_logprob(params, config, tok, question, prompts[i], images[i])
        prior, _ = _manual_answer_logprob(params, config, tok, question, prompts[i], blank)
        assert int(length[i]) == n
        np.testing.assert_allclose(float(total[i]), want, rtol=1e-5)
        np.testing.assert_allclose(no_prior[i], want / n, rtol=1e-5)
        np.testing.assert_allclose(reward[i], (want - prior) / n, rtol=1e-4, atol=1e-5)
    blank_batch = dataclasses.replace(batch, images=np.stack([blank] * 3))
    np.testing.assert_allclose(make_reward("vlm_caption", ctx, judge="tiny")(blank_batch), 0.0,
                               atol=1e-6)


def test_caption_blank_prior_is_computed_once_per_distinct_prompt(tiny):
    """A GRPO batch (3 prompts x 2 samples, grouped) gets the same rewards as row-by-row blank
    priors, while the judge scores the blank image for 4 rows only (3 distinct prompts padded
    to a power of two), not 6."""
    from jaxgen.data import judge as judge_data
    from jaxgen.rewards.vlm_judge import blank_prior
    config, params, tok, judge = tiny
    prompts = [p for p in ["a red circle", "two blue squares", "a cyan circle"] for _ in range(2)]
    question = judge_data.DESCRIBE_QUESTION
    rows_seen = []
    original = judge.answer_logprob

    def counting(questions, answers, **kw):
        rows_seen.append(len(answers))
        return original(questions, answers, **kw)

    judge.answer_logprob = counting
    try:
        got = np.asarray(blank_prior(judge, question, prompts, 16, 48))
    finally:
        del judge.answer_logprob
    assert rows_seen == [4]
    blank = judge_data.blank_image(16)
    for i, p in enumerate(prompts):
        want, _ = _manual_answer_logprob(params, config, tok, question, p, blank)
        np.testing.assert_allclose(got[i], want, rtol=1e-5)
    assert got[0] == got[1] and got[2] == got[3]


def test_caption_reward_decodes_codes_in_graph_and_rejects_long_answers(tiny):
    ctx, codes, host = decoding_context(tiny, 4)
    fn = make_reward("vlm_caption", ctx, judge="tiny")
    prompts = ["a red circle", "a blue square"]
    on_device = fn(RewardBatch(prompts=prompts, reasoning=["", ""], metadata=[{}, {}],
                               image_tokens=codes))
    on_host = fn(RewardBatch(prompts=prompts, reasoning=["", ""], metadata=[{}, {}], images=host))
    np.testing.assert_allclose(np.asarray(on_device), np.asarray(on_host), rtol=1e-4, atol=1e-5)
    with pytest.raises(PromptTooLongError, match="max_answer_tokens"):
        make_reward("vlm_caption", ctx, judge="tiny", max_answer_tokens=4)(
            RewardBatch(prompts=["a red circle left of a blue square"], reasoning=[""],
                        metadata=[{}], images=host[:1]))
    with pytest.raises(Exception, match="baseline"):
        make_reward("vlm_caption", ctx, judge="tiny", baseline="mean")
