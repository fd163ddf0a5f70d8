"""Sampler: parity with Hugging Face image generation, determinism, compilation count, the
reasoning phase's stopping rule, and log-probs against the teacher-forced scorer."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.errors import PromptTooLongError, UserError
from jaxgen.models import janus
from jaxgen.sampling import sampler
from jaxgen.sampling.sampler import SampleOptions, sample
from jaxgen.sampling.scoring import sequence_logprobs, sequence_logprobs_and_entropy
from tests.helpers.hf_reference import hf_greedy_image_tokens, with_begin_of_image

LOGPROB_ATOL = 1e-5
THINK_BUDGET = 6


def _prompts(config, lengths, seed=0):
    """Left-padded random word prompts starting with BOS: (ids int32 [B, L], mask bool [B, L])."""
    rng = np.random.default_rng(seed)
    specials = {config.bos_token_id, config.eos_token_id, config.pad_token_id, config.boi_token_id,
                config.eoi_token_id, config.image_token_id}
    words = np.array([i for i in range(1, config.text.vocab_size) if i not in specials])
    width = max(lengths)
    ids = np.full((len(lengths), width), config.pad_token_id, np.int32)
    mask = np.zeros((len(lengths), width), bool)
    for r, n in enumerate(lengths):
        ids[r, width - n] = config.bos_token_id
        ids[r, width - n + 1:] = rng.choice(words, n - 1)
        mask[r, width - n:] = True
    return ids, mask


def _hf_greedy_image_tokens(model, config, ids, cfg_weight):
    """HF's image `generate` (greedy, CFG) on unpadded prompts; its prompts end with <boi>."""
    return hf_greedy_image_tokens(model, config, with_begin_of_image(ids, config), cfg_weight)


def test_greedy_cfg_matches_hugging_face(tiny_jax, hf_tiny_model):
    params, config, _ = tiny_jax
    ids, mask = _prompts(config, [7, 7], seed=1)
    want = _hf_greedy_image_tokens(hf_tiny_model, config, ids, 5.0)
    got = sample(params, config, ids, mask, jax.random.PRNGKey(0),
                 SampleOptions(greedy=True, cfg_weight=5.0))
    assert want.shape == (2, config.num_image_tokens)
    np.testing.assert_array_equal(np.asarray(got.image_ids_bn), want)
    # A different prompt leads to a different image (the comparison is not vacuous).
    assert not np.array_equal(want[0], want[1])
    # Without reasoning, the reported log-probs are the scorer's (greedy reports them too).
    _assert_logprobs_match(params, config, got, SampleOptions(greedy=True, cfg_weight=5.0), "cfg")


@pytest.fixture(scope="module")
def sampled(tiny_jax):
    """One temperature-sampled rollout with reasoning hidden from the CFG unconditional row."""
    params, config, _ = tiny_jax
    ids, mask = _prompts(config, [5, 8, 8], seed=3)
    opts = SampleOptions(max_think_tokens=THINK_BUDGET, temperature=1.3, top_k=50, top_p=0.95,
                         image_temperature=0.8, cfg_weight=4.0, uncond_hides="prompt_and_reasoning")
    rollout = sample(params, config, ids, mask, jax.random.PRNGKey(7), opts)
    return ids, mask, opts, rollout


def test_fixed_seed_is_reproducible_and_compiles_once(tiny_jax, sampled):
    params, config, _ = tiny_jax
    ids, mask, opts, first = sampled
    compiled = sampler.compiled_count()
    again = sample(params, config, ids, mask, jax.random.PRNGKey(7), opts)
    other = sample(params, config, ids, mask, jax.random.PRNGKey(8), opts)
    assert sampler.compiled_count() == compiled  # same shapes and options: no new executable
    for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(first.image_ids_bn), np.asarray(other.image_ids_bn))


def _scored(params, config, rollout, opts, cfg_mode):
    fn = jax.jit(sequence_logprobs, static_argnums=(1, 3, 4, 5),
                 static_argnames=("temperature", "image_temperature"))
    return fn(params, config, rollout, cfg_mode, opts.cfg_weight, opts.uncond_hides,
              temperature=opts.temperature, image_temperature=opts.image_temperature)


def _assert_logprobs_match(params, config, rollout, opts, cfg_mode):
    think_lp, image_lp = _scored(params, config, rollout, opts, cfg_mode)
    np.testing.assert_allclose(np.asarray(think_lp), np.asarray(rollout.think_logprobs_bt),
                               atol=LOGPROB_ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(image_lp), np.asarray(rollout.image_logprobs_bn),
                               atol=LOGPROB_ATOL, rtol=0)


def test_logprobs_match_scorer_with_reasoning_and_cfg(tiny_jax, sampled):
    params, config, _ = tiny_jax
    _, _, opts, rollout = sampled
    assert rollout.think_logprobs_bt.shape == (3, THINK_BUDGET)
    assert np.asarray(rollout.think_mask_bt).any()
    _assert_logprobs_match(params, config, rollout, opts, "cfg")
    # Guidance matters: conditional-only scoring gives other numbers for the same tokens.
    _, cond_lp = _scored(params, config, rollout, opts, "conditional")
    assert np.abs(np.asarray(cond_lp) - np.asarray(rollout.image_logprobs_bn)).max() > 1e-3
    # Hiding the reasoning from the unconditional row changes the guided distribution.
    shown = _scored(params, config, rollout, dataclasses.replace(opts, uncond_hides="prompt"),
                    "cfg")[1]
    assert np.abs(np.asarray(shown) - np.asarray(rollout.image_logprobs_bn)).max() > 1e-4


def test_logprobs_without_guidance_match_all_modes(tiny_jax):
    params, config, _ = tiny_jax
    ids, mask = _prompts(config, [6, 6], seed=5)
    opts = SampleOptions(max_think_tokens=THINK_BUDGET, cfg_weight=1.0)
    rollout = sample(params, config, ids, mask, jax.random.PRNGKey(11), opts)
    for mode in ("none", "conditional", "cfg"):
        _assert_logprobs_match(params, config, rollout, opts, mode)


def test_scorer_is_differentiable_and_reports_entropy(tiny_jax, sampled):
    params, config, _ = tiny_jax
    _, _, opts, rollout = sampled

    def loss(p):
        think_lp, image_lp, think_ent, image_ent = sequence_logprobs_and_entropy(
            p, config, rollout, "cfg", opts.cfg_weight, opts.uncond_hides,
            temperature=opts.temperature, image_temperature=opts.image_temperature)
        return think_lp.sum() + image_lp.sum(), (think_ent, image_ent)

    grads, (think_ent, image_ent) = jax.jit(jax.grad(loss, has_aux=True))(params)
    for part in ("lm_head", "generation_head", "language_model", "generation_aligner"):
        norms = [float(jnp.linalg.norm(g)) for g in jax.tree_util.tree_leaves(grads[part])]
        assert all(np.isfinite(norms)) and max(norms) > 0, part
    # Entropy is within [0, log V] and zero exactly where no reasoning token was kept.
    mask = np.asarray(rollout.think_mask_bt)
    assert (np.asarray(think_ent)[~mask] == 0).all() and (np.asarray(think_ent)[mask] > 0).all()
    assert (np.asarray(image_ent) > 0).all()
    assert (np.asarray(image_ent) <= np.log(config.vq.num_embeddings) + 1e-4).all()


@functools.partial(jax.jit, static_argnums=1)
def _teacher_forced(params, config, rollout):
    """Hidden states [B, L+T, D] and text logits over [prompt; reasoning] (no cache)."""
    ids = jnp.concatenate([rollout.prompt_ids_bl, rollout.think_ids_bt], 1)
    mask = jnp.concatenate([rollout.prompt_mask_bl, rollout.think_mask_bt], 1)
    hidden, _ = janus.decode(params, config, janus.embed_text(params, config, ids),
                             sampler.positions_from_mask(mask), mask)
    return hidden, janus.text_logits(params, config, hidden)


def _check_greedy_reasoning(params, config, rollout):
    """Every kept token is the teacher-forced argmax (and not a stop token); a row that stopped
    before the budget had a stop token as argmax at the stop; nothing is kept after the stop."""
    _, logits = _teacher_forced(params, config, rollout)
    argmax = np.asarray(jnp.argmax(logits, -1))
    l = rollout.prompt_ids_bl.shape[1]
    think, keep = np.asarray(rollout.think_ids_bt), np.asarray(rollout.think_mask_bt)
    stops = (config.boi_token_id, config.eos_token_id)
    lengths = []
    for b in range(think.shape[0]):
        n = int(keep[b].sum())
        assert keep[b, :n].all() and not keep[b, n:].any()
        assert (think[b, n:] == config.pad_token_id).all()
        np.testing.assert_array_equal(think[b, :n], argmax[b, l - 1: l - 1 + n])
        assert not np.isin(think[b, :n], stops).any()
        if n < think.shape[1]:
            assert argmax[b, l - 1 + n] in stops
        lengths.append(n)
    return lengths


GREEDY_THINK = SampleOptions(max_think_tokens=THINK_BUDGET, greedy=True, cfg_weight=5.0)


@pytest.fixture(scope="module")
def greedy_reasoning(tiny_jax):
    """Greedy reasoning + CFG image tokens for three prompts, the first one left padded."""
    params, config, _ = tiny_jax
    ids, mask = _prompts(config, [5, 7, 7], seed=6)
    return ids, mask, sample(params, config, ids, mask, jax.random.PRNGKey(0), GREEDY_THINK)


def test_reasoning_stops_at_begin_of_image_and_respects_budget(tiny_jax, greedy_reasoning):
    params, config, _ = tiny_jax
    ids, mask, first = greedy_reasoning
    stop_step = 2
    assert _check_greedy_reasoning(params, config, first)[0] > stop_step
    # Make <begin_of_image> the argmax right where row 0 wrote its 3rd reasoning token: its
    # lm_head column becomes that token's column plus a nudge along that step's hidden state.
    hidden, _ = _teacher_forced(params, config, first)
    h = hidden[0, ids.shape[1] - 1 + stop_step]
    tok = int(first.think_ids_bt[0, stop_step])
    kernel = params["lm_head"]["kernel"]
    kernel = kernel.at[:, config.boi_token_id].set(kernel[:, tok] + 1.0 * h / jnp.dot(h, h))
    nudged = {**params, "lm_head": {**params["lm_head"], "kernel": kernel}}
    second = sample(nudged, config, ids, mask, jax.random.PRNGKey(0), GREEDY_THINK)
    lengths = _check_greedy_reasoning(nudged, config, second)
    assert lengths[0] <= stop_step
    # The stopped row's image tokens follow <begin_of_image> right after its short reasoning,
    # in the layout the scorer recomputes.
    _assert_logprobs_match(nudged, config, second, GREEDY_THINK, "cfg")


def test_left_padding_does_not_change_greedy_tokens(tiny_jax, greedy_reasoning):
    params, config, _ = tiny_jax
    ids, mask, both = greedy_reasoning
    n = int(mask[0].sum())
    compiled = sampler.compiled_count()
    alone = sample(params, config, ids[:1, -n:], mask[:1, -n:], jax.random.PRNGKey(0), GREEDY_THINK)
    assert sampler.compiled_count() == compiled + 1  # a new shape is a new executable
    np.testing.assert_array_equal(np.asarray(both.think_ids_bt[0]), np.asarray(alone.think_ids_bt[0]))
    np.testing.assert_array_equal(np.asarray(both.image_ids_bn[0]), np.asarray(alone.image_ids_bn[0]))
    np.testing.assert_allclose(np.asarray(both.image_logprobs_bn[0]),
                               np.asarray(alone.image_logprobs_bn[0]), atol=LOGPROB_ATOL)


def test_options_and_context_are_validated(tiny_jax):
    params, config, _ = tiny_jax
    with pytest.raises(UserError, match="uncond_hides"):
        SampleOptions(uncond_hides="everything")
    with pytest.raises(UserError, match="temperature"):
        SampleOptions(temperature=0.0)
    ids, mask = _prompts(config, [4], seed=0)
    limit = config.text.max_position_embeddings
    with pytest.raises(PromptTooLongError, match=str(limit)):
        sample(params, config, ids, mask, jax.random.PRNGKey(0),
               SampleOptions(max_think_tokens=limit))
    with pytest.raises(UserError, match="cfg_mode"):
        sequence_logprobs(params, config, None, "guided", 5.0)


def test_top_k_top_p_filter():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda x: np.isfinite(np.asarray(x))[0].tolist()
    assert kept(sampler.filter_logits(logits, 2, 1.0)) == [True, True, False, False]
    assert kept(sampler.filter_logits(logits, 0, 0.7)) == [True, True, False, False]
    assert kept(sampler.filter_logits(logits, 0, 0.85)) == [True, True, True, False]
    assert kept(sampler.filter_logits(logits, 0, 0.1)) == [True, False, False, False]


def test_image_position_embeddings_reach_sampler_and_scorer_alike(tiny_jax):
    """With image_position_embeddings the sampler feeds code i-1 at grid index i-1 and the
    scorer indexes the teacher-forced codes 0..n-2: their log-probs still agree, and the
    embeddings change them (they are read). Hugging Face export refuses such a model."""
    from jaxgen.convert.hf import params_to_hf_tensors
    params, config, _ = tiny_jax
    config = config.replace(image_position_embeddings=True)
    table = jax.random.normal(jax.random.PRNGKey(2), (config.num_image_tokens,
                                                      config.text.hidden_size))
    params = {**params, "image_positions": {"embedding": table}}
    ids, mask = _prompts(config, [5, 8], seed=4)
    opts = SampleOptions(max_think_tokens=THINK_BUDGET, temperature=1.0, image_temperature=0.9,
                         cfg_weight=3.0, uncond_hides="prompt_and_reasoning")
    rollout = sample(params, config, ids, mask, jax.random.PRNGKey(5), opts)
    _assert_logprobs_match(params, config, rollout, opts, "cfg")
    shuffled = {**params, "image_positions": {"embedding": table[::-1]}}
    _, moved = _scored(shuffled, config, rollout, opts, "cfg")
    assert np.abs(np.asarray(moved) - np.asarray(rollout.image_logprobs_bn)).max() > 1e-2
    with pytest.raises(UserError, match="image_position_embeddings"):
        params_to_hf_tensors(params, config)
