"""Janus-Pro-R1 self-reflection: stop index, R_Gen and R_Comp on hand-computed cases, and the
loop inside GRPO on the tiny random policy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.config import load_config
from jaxgen.data.tokenizer import tokenize_prompts
from jaxgen.errors import UserError
from jaxgen.sampling import sampler as sampler_lib
from jaxgen.train import grpo
from jaxgen.train import reflection as R
from tests.helpers import rl_test_setup

SE = np.array([[0.9, 0.1, 0.2],    # says yes at once: K = 1
               [0.2, 0.7, 0.9],    # no, then yes: K = 2
               [0.1, 0.2, 0.3]])   # never yes: K = T = 3
RQA = np.array([[0.8, 0.0, 0.0],
                [0.3, 0.6, 0.0],
                [0.2, 0.4, 0.5]])


def test_stop_index_and_mask():
    k = R.stop_index(SE, 0.5)
    np.testing.assert_array_equal(k, [1, 2, 3])
    np.testing.assert_array_equal(R.active_mask(k, 3), [[1, 0, 0], [1, 1, 0], [1, 1, 1]])


def test_r_gen_by_hand():
    k = R.stop_index(SE)
    # row 0: (3-1+1)*0.8; row 1: 0.3 + (3-2+1)*0.6; row 2: 0.2 + 0.4 + 1*0.5
    np.testing.assert_allclose(R.r_gen(RQA, k), [2.4, 1.5, 1.1], rtol=1e-6)


def test_r_comp_by_hand():
    k = R.stop_index(SE)
    want = [(1 - 0.1) * 3 / 1,
            ((1 - 0.1) + (1 - 0.1)) * 3 / 2,
            ((1 - 0.1) + (1 - 0.2) + (1 - 0.2)) * 3 / 3]
    np.testing.assert_allclose(R.r_comp(RQA, SE, k), want, rtol=1e-6)


# ------------------------------------------------------------------ the loop inside GRPO
# `policy`: the tiny random GRPO policy of tests/train/conftest.py


def _config(max_images=3):
    c = load_config("grpo:tiny", ["--config.mesh.fsdp=1", "--config.sampling.max_think_tokens=2",
                                  f"--config.reflection.max_images={max_images}",
                                  "--config.grpo.cfg_mode=cfg", "--config.grpo.loss.beta=0.04"])
    c.rewards = {"name": rl_test_setup.LOW_CODES}
    c.reflection.max_text_tokens = 48
    return c


def test_reflection_rollout_rows_answers_and_trajectory_advantages(policy, monkeypatch):
    """reflection.max_images=3: the rollout holds 3 rounds of the plain sampler (same keys), the
    policy's answers decide K, R_Gen / R_Comp come from the reward of every image, and the update
    sees the trajectory's advantage on each produced image and weight 0 on the others."""
    runner = grpo.GRPORunner(_config(), policy=policy)
    b, t = runner.batch_size, 3
    assert runner.rows == b * t
    seen = {}
    monkeypatch.setattr(runner, "update", lambda batch, it: seen.update(batch=batch) or {})
    out = runner.step(0)
    metrics, refl, batch = out.metrics, out.reflection, seen["batch"]
    # round i is the plain sampler with key fold_in(rng, i)
    records = runner.prompts.batch(0, runner.num_prompts)
    texts = [r["prompt"] for r in records for _ in range(runner.group_size)]
    ids, mask = tokenize_prompts(runner.tokenizer, runner.model_config, texts, 24)
    rng = jax.random.fold_in(jax.random.PRNGKey(0), 0)
    plain = sampler_lib.sample(runner.params, runner.model_config, jnp.asarray(ids),
                               jnp.asarray(mask), jax.random.fold_in(rng, 1), runner.options)
    np.testing.assert_array_equal(np.asarray(refl.rollout.image_ids_bn)[b:2 * b],
                                  np.asarray(plain.image_ids_bn))
    # the answers: K is the first yes; sampled answers agree with SE in expectation only
    np.testing.assert_array_equal(refl.num_images, R.first_yes(refl.said_yes))
    np.testing.assert_array_equal(refl.active, R.active_mask(refl.num_images, t))
    # rewards by hand: R_QA of each image is its share of low codes
    codes = np.asarray(refl.rollout.image_ids_bn)
    rqa_bt = (codes < 32).mean(axis=1).reshape(t, b).T
    want_gen = R.r_gen(rqa_bt, refl.num_images)
    want_comp = R.r_comp(rqa_bt, refl.self_eval, refl.num_images)
    assert metrics["reward/r_gen"] == pytest.approx(float(want_gen.mean()), rel=1e-5)
    assert metrics["reward/r_comp"] == pytest.approx(float(want_comp.mean()), rel=1e-5)
    assert metrics["reward_mean"] == pytest.approx(
        float(rqa_bt[np.arange(b), refl.num_images - 1].mean()), rel=1e-5)
    assert 1 <= metrics["reflection/num_images"] <= t
    # advantages: per-reward group normalisation of (R_Gen, R_Comp), summed, tiled over rounds
    adv_b, keep_b = runner.advantages(np.stack([want_gen, want_comp], 1), np.ones(2, np.float32))
    adv, keep = np.asarray(batch["adv"]), np.asarray(batch["keep"])
    np.testing.assert_allclose(adv.reshape(t, b), np.tile(adv_b, (t, 1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(keep.reshape(t, b), (refl.active * keep_b[:, None]).T)
    assert (keep == 0).any() or (refl.num_images == t).all()
    np.testing.assert_array_equal(np.asarray(batch["self_eval"]["said_yes"]),
                                  refl.said_yes.T.reshape(-1))


def test_self_eval_loss_against_numpy(policy):
    """The answers' clipped surrogate: rho = exp(logp - old), -min(rho A, clip(rho) A), mean over
    produced images; logp = log sigmoid(+-logit) of the answer given."""
    params, mc, tok = policy
    judge = R.self_eval_judge(params, mc, tok, max_text_tokens=24)
    rng = np.random.default_rng(0)
    n = 8
    codes = jnp.asarray(rng.integers(0, mc.vq.num_embeddings, (n, mc.num_image_tokens)), jnp.int32)
    questions = ["Does this image show a red circle?"] * n
    logit = np.asarray(judge.yes_no_logit(questions, codes, (params, mc)), np.float64)
    said_yes = np.array([1, 0, 1, 0, 1, 1, 0, 0], bool)
    logp = np.where(said_yes, -np.logaddexp(0, -logit), -np.logaddexp(0, logit))
    old = logp + np.array([0.5, -0.5, 0.0, 0.3, -0.3, 0.1, 0.0, 0.0])
    adv = np.array([1.0, -1.0, 0.5, 2.0, -0.7, 1.0, 1.0, -1.0])
    keep = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)
    ratio = np.exp(logp - old)
    pg = -np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.28) * adv)
    want = (pg * keep).sum() / keep.sum()
    ids, mask = judge.tokenize(questions, with_image=True)
    s = R.SelfEvalSettings(judge.yes_ids, judge.no_ids, weight=2.0)
    batch = dict(question_ids=ids, question_mask=mask, codes=codes, said_yes=jnp.asarray(said_yes),
                 old_logp=jnp.asarray(old, jnp.float32))
    loss_fn = jax.jit(lambda p, b, a, k: R.self_eval_loss(p, mc, b, a, k, s, 0.2, 0.28))
    loss, m = loss_fn(params, batch, jnp.asarray(adv, jnp.float32), jnp.asarray(keep))
    assert float(m["self_eval_loss"]) == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert float(loss) == pytest.approx(2.0 * want, rel=1e-4, abs=1e-6)
    # a few steps with positive advantages on 'yes' answers raise P(yes) on those images
    adv = np.where(said_yes, 1.0, 0.0)
    batch["old_logp"] = jnp.asarray(logp, jnp.float32)
    grad_fn = jax.jit(jax.grad(lambda p: loss_fn(p, batch, jnp.asarray(adv, jnp.float32),
                                                 jnp.ones(n))[0]))
    p = params
    for _ in range(5):
        p = jax.tree.map(lambda w, g: w - 0.05 * g, p, grad_fn(p))
    after = np.asarray(R.self_eval_judge(p, mc, tok, max_text_tokens=24).yes_no_logit(
        questions, codes, (p, mc)))
    assert (after[said_yes] > logit[said_yes]).all()


def test_reflection_trains_and_rejects_text_rewards(policy):
    runner = grpo.GRPORunner(_config(max_images=2), policy=policy)
    before = jax.device_get(runner.params)
    m = runner.iteration(0)
    assert np.isfinite(m["loss"]) and "self_eval_loss" in m and "reflection/self_eval" in m
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                         runner.params, before)
    assert max(jax.tree.leaves(moved["generation_head"])) > 0
    assert max(jax.tree.leaves(moved["language_model"])) > 0
    # the image understanding tower learns only from the self-evaluation answers
    assert max(jax.tree.leaves(moved["vision_model"])) > 0
    c = _config(max_images=2)
    c.reflection.self_eval_weight = 0.0  # the answers do not train: their pass is skipped
    assert grpo.GRPORunner(c, policy=policy).update_settings.self_eval is None
    c = _config()
    c.grpo.text_rewards = {"name": "constant"}
    with pytest.raises(UserError, match="text_rewards cannot be combined"):
        grpo.GRPORunner(c, policy=policy)
    c = _config()
    c.grpo.minibatches = 5
    with pytest.raises(UserError, match="batch 24"):
        grpo.GRPORunner(c, policy=policy)
