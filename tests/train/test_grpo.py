"""GRPO loop on a tiny random model: metrics log, checkpoints, resume, exported policy, errors."""

import json
import pathlib

import jax
import numpy as np
import pytest

from jaxgen import checkpoint as ckpt_lib
from jaxgen.config import load_config
from jaxgen.errors import UserError
from jaxgen.models import janus
from jaxgen.rewards import register_reward
from jaxgen.train import grpo
from tests.helpers.tiny_tokenizer import make_tokenizer


LOW = 32  # test_low_codes' default threshold


@register_reward("test_low_codes")
def _low_codes(context, threshold: int = LOW):
    return lambda b: (np.asarray(b.image_tokens) < threshold).mean(axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def policy():
    config = load_config("grpo:tiny")
    model_config = janus.config_from_configdict(config.model)
    params = jax.jit(janus.init_params, static_argnums=0)(model_config, jax.random.PRNGKey(0))
    return params, model_config, make_tokenizer()


def _config(steps):
    """Tiny GRPO at Adam lr 3e-3: 3 iterations move the policy measurably (the direction check
    below), and one learning rate keeps one compiled update for the module's runs."""
    c = load_config("grpo:tiny", [f"--config.total_steps={steps}", "--config.checkpoint_every=2",
                                  "--config.mesh.fsdp=1", "--config.grpo.loss.beta=0.04",
                                  "--config.sampling.max_think_tokens=2",
                                  "--config.optim.learning_rate=3e-3"])
    c.rewards = {"op": "sum", "terms": [{"name": "test_low_codes"},
                                        {"name": "format", "weight": 0.5,
                                         "kwargs": {"mode": "caption"}}]}
    return c


def _low_codes_config(steps):
    """_config(steps) whose whole reward asks for low image codes (two streams: below 32, and
    below 16 at weight 0.5), so that the direction a run moves the policy is known. With the
    caption-format term of _config, whose 0/1 values spread far more within a group than the
    share of low codes does, the codes move with whatever the format happened to correlate with
    (measured on 4 rollouts after 3 iterations: low codes' log-probs against the others' -0.02
    to +0.001 nats per token at Adam lr 3e-3, -0.09 to -0.14 at 1e-2; with this tree +0.23 at
    3e-3, on the check's rollout, whose per-token means have a standard error of ~0.02)."""
    c = _config(steps)
    c.rewards = {"op": "sum", "terms": [
        {"name": "test_low_codes"},
        {"name": "test_low_codes", "label": "below_16", "weight": 0.5,
         "kwargs": {"threshold": LOW // 2}}]}
    return c


def test_train_logs_checkpoints_and_resumes(tmp_path, policy):
    out = grpo.train(_low_codes_config(2), tmp_path, policy=policy)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1]
    for x in lines:
        assert 0.0 <= x["reward/below_16"] <= x["reward/test_low_codes"] <= 1.0
        assert "kl" in x and "time_update" in x
    assert out["reward_per_step"] == [x["reward_mean"] for x in lines]
    assert (tmp_path / "checkpoints" / "2").is_dir()
    assert (pathlib.Path(out["policy_checkpoint"]) / "params.safetensors").exists()
    again = grpo.train(_low_codes_config(3), tmp_path, policy=policy)
    assert again["start_step"] == 2 and len(again["reward_per_step"]) == 3
    trained, _, _ = ckpt_lib.load_checkpoint(again["policy_checkpoint"])
    # The policy moved towards the reward: on a rollout it never trained on (the initial
    # policy's samples of step 0's prompts from another seed), the trained policy's log-prob of
    # the low codes rose against that of the others, teacher-forced on the same tokens.
    runner = grpo.GRPORunner(_low_codes_config(3), policy=policy)
    rollout = runner.rollout(1000, runner.prompts.batch(0, runner.num_prompts))[0]
    score = jax.jit(grpo.score_rollout, static_argnums=(1, 3))
    before, after = (np.asarray(score(p, runner.model_config, rollout, runner.score)[1])
                     for p in (policy[0], trained))
    low = np.asarray(rollout.image_ids_bn) < LOW
    assert low.any() and (~low).any()
    gain = after - before  # per image token, in nats
    assert gain[low].mean() - gain[~low].mean() > 0.05, (gain[low].mean(), gain[~low].mean())


def test_keep_checkpoint_every_keeps_the_trajectory(tmp_path, policy):
    c = _config(4)
    c.checkpoint_every, c.keep_checkpoints, c.keep_checkpoint_every = 1, 1, 2
    grpo.train(c, tmp_path, policy=policy)
    steps = sorted(int(d.name) for d in (tmp_path / "checkpoints").iterdir() if d.name.isdigit())
    assert steps == [2, 4]  # the newest, and every multiple of 2; steps 1 and 3 pruned
    # a kept step exports as a policy checkpoint; the newest one equals the run's final policy
    from jaxgen import api
    final = api.load_checkpoint(tmp_path / "final")[0]
    at4 = api.load_checkpoint(grpo.export_step(_config(4), tmp_path, 4, policy=policy))[0]
    at2 = api.load_checkpoint(grpo.export_step(_config(4), tmp_path, 2, policy=policy))[0]
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(at4)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(at2)))
    with pytest.raises(UserError, match=r"no checkpoint of step 3 .*kept: \[2, 4\]"):
        grpo.export_step(_config(4), tmp_path, 3, policy=policy)


def test_config_errors(policy):
    c = _config(1)
    c.grpo.cfg_mode = "guided"
    with pytest.raises(UserError, match="cfg_mode"):
        grpo.GRPORunner(c, policy=policy)
    c = _config(1)
    c.grpo.minibatches = 3
    with pytest.raises(UserError, match="minibatches=3"):
        grpo.GRPORunner(c, policy=policy)
    c = _config(1)
    c.rewards = {"name": "vlm_yes_no", "kwargs": {"judge": "judge"}}
    with pytest.raises(UserError, match="judge_checkpoint is empty"):
        grpo.GRPORunner(c, policy=policy)


@register_reward("test_reasoning_length")
def _reasoning_length(context):
    return lambda b: np.array([len(t) for t in b.reasoning], np.float32)


def test_text_rewards_give_the_reasoning_tokens_their_own_advantages(policy, monkeypatch):
    """grpo.text_rewards: reasoning tokens take advantages from their own reward tree, image
    tokens keep those of `rewards` (equal to a run without text_rewards on the same rollout)."""
    c = _config(2)
    c.grpo.text_rewards = {"name": "test_reasoning_length"}
    runner = grpo.GRPORunner(c, policy=policy)
    plain = grpo.GRPORunner(_config(2), policy=policy)
    seen, m, reasoning = {}, {}, {}
    for r, key in ((runner, "split"), (plain, "plain")):
        real = r.update
        monkeypatch.setattr(r, "update", lambda batch, it, key=key: seen.update({key: batch}) or {})
        out = r.step(0)
        m[key], reasoning[key] = out.metrics, out.reasoning
        monkeypatch.setattr(r, "update", real)
    text_adv, image_adv = (np.asarray(a) for a in seen["split"]["adv"])
    np.testing.assert_array_equal(image_adv, np.asarray(seen["plain"]["adv"]))
    lengths = np.array([len(t) for t in reasoning["split"]], np.float32).reshape(-1, 4)
    centred = lengths - lengths.mean(axis=1, keepdims=True)
    varied = lengths.std(axis=1) > 0
    assert varied.any()
    np.testing.assert_array_equal(np.sign(text_adv.reshape(-1, 4))[varied], np.sign(centred)[varied])
    assert "reward/test_reasoning_length" in m["split"] and "text_reward_mean" in m["split"]
    before = jax.device_get(runner.params["generation_head"])
    metrics = runner.iteration(1)  # the jitted update takes the (text, image) pair
    assert np.isfinite(metrics["loss"])
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                         runner.params["generation_head"], before)
    assert max(jax.tree.leaves(moved)) > 0


def test_negative_advantage_scale_reaches_the_update(policy, monkeypatch):
    """grpo.negative_advantage_scale=0: the update sees plain GRPO's advantages with the
    negative ones zeroed (same rollout), and the config rejects a scale outside [0, 1]."""
    seen = {}
    for key, scale in (("plain", 1.0), ("positive", 0.0)):
        c = _config(2)
        c.grpo.negative_advantage_scale = scale
        runner = grpo.GRPORunner(c, policy=policy)
        monkeypatch.setattr(runner, "update", lambda batch, it, key=key: seen.update({key: batch}) or {})
        runner.iteration(0)
    plain, positive = np.asarray(seen["plain"]["adv"]), np.asarray(seen["positive"]["adv"])
    assert (plain < 0).any() and (plain > 0).any()
    np.testing.assert_array_equal(positive, np.maximum(plain, 0))
    c = _config(1)
    c.grpo.negative_advantage_scale = -0.5
    with pytest.raises(UserError, match="negative_advantage_scale"):
        grpo.GRPORunner(c, policy=policy)
    c = _config(1)
    c.grpo.negative_advantage_scale, c.grpo.cfg_mode = 0.0, "conditional"
    with pytest.warns(UserWarning, match="cfg_mode='cfg'"):
        grpo.GRPORunner(c, policy=policy)


def test_positive_only_update_raises_the_samplers_probability_of_rewarded_samples(policy):
    """cfg_mode='cfg' scores image tokens under the sampler's own distribution (CFG-combined
    logits at the image temperature), so learning from the better-than-group samples only must
    make exactly those samples more likely for the sampler (and leave the others' advantage 0)."""
    c = _config(3)
    c.grpo.loss.beta = 0.0
    c.grpo.cfg_mode = "cfg"
    c.grpo.negative_advantage_scale = 0.0
    c.optim.learning_rate = 3e-3
    runner = grpo.GRPORunner(c, policy=policy)
    assert runner.score.cfg_weight != 1.0
    records = runner.prompts.batch(0, runner.num_prompts)
    rollout, texts, metadata, _ = runner.rollout(0, records)
    rw = runner.rewards(rollout, texts, metadata)
    streams, weights = rw.streams, rw.weights
    adv, keep = runner.advantages(streams, weights)
    positive = adv > 0
    assert positive.any() and (adv >= 0).all()
    batch = dict(rollout=rollout, adv=runner._put_batch(adv), keep=runner._put_batch(keep),
                 old_think=None, old_image=None, ref_think=None, ref_image=None)
    before = np.asarray(rollout.image_logprobs_bn).sum(axis=1)  # the sampler's own log-probs
    _, scored, _, _ = grpo.score_rollout(runner.params, runner.model_config, rollout, runner.score)
    np.testing.assert_allclose(np.asarray(scored).sum(axis=1), before, rtol=1e-4, atol=1e-3)
    for _ in range(3):
        runner.params, runner.opt_state, _ = runner._update(runner.params, runner.opt_state, batch,
                                                            runner.entropy_coefs())
    _, after, _, _ = grpo.score_rollout(runner.params, runner.model_config, rollout, runner.score)
    gain = np.asarray(after).sum(axis=1) - before
    assert gain[positive].mean() > 1.0, gain[positive]


def test_cli_export_step_reports_a_step_that_was_not_kept(tmp_path, capsys):
    from jaxgen.cli import main
    code = main(["train", "grpo", "--config", "configs/grpo.py:tiny", "--workdir", str(tmp_path),
                 "--export-step", "3"])
    assert code == 2
    assert "no checkpoint of step 3" in capsys.readouterr().err
