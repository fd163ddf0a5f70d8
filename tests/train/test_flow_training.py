"""The diffusion path's training: flow matching on a frozen unified model, and Flow-GRPO."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import checkpoint as ckpt_lib
from jaxgen.cli import main
from jaxgen.config import load_config
from jaxgen.errors import CheckpointError, PromptTooLongError, UserError
from jaxgen.models import flow, janus
from jaxgen.rewards import register_reward
from jaxgen.sampling import flow_generate
from jaxgen.train import flow_grpo, flow_matching
from tests.helpers.tiny_tokenizer import make_tokenizer


@register_reward("test_dark_image")
def _dark_image(context):
    """Higher for darker images: a pixel reward every tiny decoder can move."""
    return lambda b: (1.0 - np.asarray(b.images, np.float32).mean(axis=(1, 2, 3)) / 255.0)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """A tiny random unified model with the test tokenizer, as `jaxgen train flow` reads it."""
    jc = janus.config_from_configdict(load_config("janus:tiny").model)
    params = jax.jit(janus.init_params, static_argnums=0)(jc, jax.random.PRNGKey(0))
    return ckpt_lib.save_checkpoint(tmp_path_factory.mktemp("policy"), params, jc, make_tokenizer())


def _with(config, overrides: dict):
    """config with dotted-key overrides set to Python values (tuples, floats as they are)."""
    for key, value in overrides.items():
        node = config
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return config


def _flow_config(policy, steps, **overrides):
    return _with(load_config("flow:tiny", [f"--config.policy={policy}",
                                           f"--config.total_steps={steps}"]), overrides)


@pytest.fixture(scope="module")
def flow_run(policy_dir, tmp_path_factory):
    """A 40-step flow-matching run on 4 examples (shared by the tests below)."""
    wd = tmp_path_factory.mktemp("flow")
    config = _flow_config(policy_dir, 40, **{"train.log_every": 1, "optim.learning_rate": 1e-2,
                                             "data.num_examples": 4, "train.ckpt_every": 20})
    return wd, flow_matching.train(config, wd), config


# ------------------------------------------------------------------------- flow matching

def test_flow_matching_learns_and_leaves_the_unified_model_alone(policy_dir, flow_run):
    wd, out, config = flow_run
    assert out["status"] == "done" and out["step"] == 40
    logged = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
    assert sum("train/loss" in l for l in logged) == 40
    jp, jc, tok, fp, fc = ckpt_lib.load_flow_checkpoint(out["checkpoint"])
    # the loss on the training rows, with the same 8 draws of (t, eps) before and after: v starts
    # at 0 (adaLN-zero), so the fresh loss is E|eps - x0|^2 ~ 2 per component
    batch = jax.tree.map(jnp.asarray, flow_matching.build_dataset(config, tok, jc, jp))
    fresh = flow.init_flow_params(fc, jc, jax.random.PRNGKey(0))

    loss = jax.jit(lambda params, rng: flow_matching.flow_matching_loss(
        jp, jc, params, fc, batch, rng, cond_dropout=0.0).mean())

    def losses(params):
        return np.array([float(loss(params, jax.random.PRNGKey(s))) for s in range(8)])

    before, after = losses(fresh), losses(fp)
    assert 1.8 < before.mean() < 2.2, before
    assert np.all(after < before) and after.mean() < 0.9 * before.mean(), (before, after)
    before, _, _ = ckpt_lib.load_checkpoint(policy_dir)
    for a, b in zip(jax.tree.leaves(jp), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)  # frozen: bitwise unchanged
    assert float(jnp.abs(fp["decoder"]["patch_out"]["kernel"]).max()) > 0  # the decoder trained
    assert fc == flow.FlowConfig.from_dict(load_config("flow:tiny").flow)
    assert tok is not None


def test_flow_matching_resumes_exactly(flow_run, tmp_path):
    """Lose the run's last checkpoint and its result, rerun the command: it resumes from step 20
    and ends bitwise where the uninterrupted run ended."""
    wd, out, config = flow_run
    copy = tmp_path / "run"
    shutil.copytree(wd, copy)
    shutil.rmtree(copy / "final")
    shutil.rmtree(copy / "checkpoints" / "40")
    resumed = flow_matching.train(config, copy)
    assert resumed["step"] == 40
    assert json.loads((copy / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 40
    fa = ckpt_lib.load_flow_checkpoint(out["checkpoint"])[3]
    fb = ckpt_lib.load_flow_checkpoint(resumed["checkpoint"])[3]
    for a, b in zip(jax.tree.leaves(fa), jax.tree.leaves(fb)):
        np.testing.assert_array_equal(a, b)


def test_condition_dropout_hides_all_text_but_bos_and_boi():
    jc = janus.config_from_configdict(load_config("janus:tiny").model)
    ids = jnp.array([[jc.pad_token_id, jc.bos_token_id, 11, 12, jc.boi_token_id]])
    hidden = flow_generate.unconditional_prefix(jc, ids)
    np.testing.assert_array_equal(hidden, [[jc.pad_token_id, jc.bos_token_id, jc.pad_token_id,
                                            jc.pad_token_id, jc.boi_token_id]])


def test_flow_matching_loss_matches_its_definition(policy_dir):
    """Per-row loss == mean (v(x_t, t) - (eps - x0))^2 with the draws it made (no dropout)."""
    jp, jc, tok = ckpt_lib.load_checkpoint(policy_dir)
    fc = flow.FlowConfig.from_dict(load_config("flow:tiny").flow)
    fp = flow.init_flow_params(fc, jc, jax.random.PRNGKey(3))
    fp["decoder"]["patch_out"]["kernel"] = 0.1 * jnp.ones_like(fp["decoder"]["patch_out"]["kernel"])
    ids, mask = flow_matching.text_row(tok, jc, "a red circle", "", 32)
    batch = {"ids": jnp.asarray(ids)[None].repeat(2, 0), "mask": jnp.asarray(mask)[None].repeat(2, 0),
             "codes": jnp.array([[1] * 64, [2] * 64], jnp.int32)}
    rng = jax.random.PRNGKey(9)
    per_row = jax.jit(lambda: flow_matching.flow_matching_loss(
        jp, jc, fp, fc, batch, rng, cond_dropout=0.0, timesteps="uniform"))()
    _, k_t, k_eps = jax.random.split(rng, 3)
    t = np.asarray(jax.random.uniform(k_t, (2,), minval=1e-5, maxval=1 - 1e-5))
    x0 = np.asarray(flow.codes_to_latents(jp, jc, batch["codes"]))
    eps = np.asarray(jax.random.normal(k_eps, x0.shape))
    xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * eps
    v = np.asarray(jax.jit(lambda x, t: flow.velocity(
        fp, fc, jc, x, t, flow.condition(jp, jc, fp, fc, batch["ids"], batch["mask"])))(
        jnp.asarray(xt), jnp.asarray(t)))
    np.testing.assert_allclose(per_row, ((v - (eps - x0)) ** 2).mean(axis=(1, 2, 3)), rtol=1e-5)


def test_flow_errors(policy_dir, tmp_path):
    _, jc, tok = ckpt_lib.load_checkpoint(policy_dir)
    with pytest.raises(PromptTooLongError, match="data.text_len"):
        flow_matching.text_row(tok, jc, "a red circle left of a blue square", "", 6)
    with pytest.raises(CheckpointError, match="no flow decoder"):
        ckpt_lib.load_flow_checkpoint(policy_dir)
    with pytest.raises(UserError, match="config.policy is empty"):
        flow_matching.train(load_config("flow:tiny"), tmp_path)
    with pytest.raises(UserError, match="loss.timesteps"):
        flow_matching.train(_flow_config(policy_dir, 1, **{"loss.timesteps": "cosine"}), tmp_path)


def test_flow_checkpoint_with_wrong_shapes_is_refused(flow_run, tmp_path):
    out = flow_run[1]
    broken = tmp_path / "broken"
    shutil.copytree(out["checkpoint"], broken)
    cfg = json.loads((broken / ckpt_lib.FLOW_CONFIG_FILE).read_text())
    cfg["hidden_size"] = 64
    (broken / ckpt_lib.FLOW_CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match"):
        ckpt_lib.load_flow_checkpoint(broken)


def test_generate_reasoning_then_flow_image(flow_run):
    out = flow_run[1]
    jp, jc, tok, fp, fc = ckpt_lib.load_flow_checkpoint(out["checkpoint"])
    ids, mask = flow_matching.text_row(tok, jc, "a red circle", "", 16)
    ids, mask = ids[:-1][None].repeat(3, 0), mask[:-1][None].repeat(3, 0)  # drop <boi>
    opts = flow_generate.FlowSampleOptions(max_think_tokens=5, num_steps=4, cfg_weight=2.0)
    a = flow_generate.generate(jp, jc, fp, fc, ids, mask, jax.random.PRNGKey(0), opts)
    assert a.latents.shape == (5, 3) + flow.latent_shape(jc)
    assert a.think_ids_bt.shape == (3, 5) and a.codes_bn.shape == (3, jc.num_image_tokens)
    np.testing.assert_array_equal(a.log_probs, 0.0)  # the ODE
    np.testing.assert_array_equal(a.codes_bn, flow.latents_to_codes(jp, jc, a.latents[-1]))
    b = flow_generate.generate(jp, jc, fp, fc, ids, mask, jax.random.PRNGKey(0), opts)
    np.testing.assert_array_equal(a.latents, b.latents)
    pixels = flow_generate.decode_pixels(jp, jc, a)
    assert pixels.shape == (3, jc.vq.image_size, jc.vq.image_size, 3)
    with pytest.raises(PromptTooLongError, match="flow queries"):
        flow_generate.generate(jp, jc, fp, fc, ids, mask, jax.random.PRNGKey(0),
                               flow_generate.FlowSampleOptions(max_think_tokens=500))


# ------------------------------------------------------------------------------ Flow-GRPO

def test_flow_grpo_loss_against_numpy():
    rng = np.random.default_rng(0)
    k, b = 3, 4
    logp = rng.normal(size=(k, b)).astype(np.float32) * 0.01
    old = logp + rng.normal(size=(k, b)).astype(np.float32) * 0.01
    adv = rng.normal(size=b).astype(np.float32)
    keep = np.array([1, 1, 0, 1], np.float32)
    mean = rng.normal(size=(k, b, 2, 2, 3)).astype(np.float32)
    ref = mean + 0.1 * rng.normal(size=mean.shape).astype(np.float32)
    std = np.array([0.5, 0.3, 0.2], np.float32)
    eps, beta = 0.005, 0.04
    loss, m = flow_grpo.flow_grpo_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv),
                                       jnp.asarray(keep), eps, beta, jnp.asarray(mean),
                                       jnp.asarray(ref), jnp.asarray(std))
    terms, kls, clipped = [], [], []
    for s in range(k):
        for i in range(b):
            if not keep[i]:
                continue
            r = np.exp(float(logp[s, i]) - float(old[s, i]))
            terms.append(-min(r * adv[i], np.clip(r, 1 - eps, 1 + eps) * adv[i]))
            kls.append(np.mean((mean[s, i] - ref[s, i]) ** 2) / (2 * std[s] ** 2))
            clipped.append(abs(r - 1) > eps)
    np.testing.assert_allclose(float(m["policy_loss"]), np.mean(terms), rtol=1e-5)
    np.testing.assert_allclose(float(m["kl"]), np.mean(kls), rtol=1e-5)
    np.testing.assert_allclose(float(loss), np.mean(terms) + beta * np.mean(kls), rtol=1e-5)
    np.testing.assert_allclose(float(m["clip_frac"]), np.mean(clipped), rtol=1e-6)


def _grpo_config(policy, steps, **overrides):
    c = load_config("flow_grpo:tiny", [f"--config.policy={policy}",
                                       f"--config.total_steps={steps}"])
    c.rewards = {"name": "test_dark_image"}
    return _with(c, overrides)


def test_recomputed_step_logprobs_equal_the_samplers(flow_run):
    """Before any update the new policy is the old one: ratio 1 on every trained step."""
    out = flow_run[1]
    runner = flow_grpo.FlowGRPORunner(_grpo_config(out["checkpoint"], 1,
                                                   **{"grpo.sde_window": (1, 3)}))
    rollout, _, _ = runner.rollout(0, runner.prompts.batch(0, runner.num_prompts))
    assert float(jnp.abs(rollout.log_probs[0]).max()) == 0.0  # step 0 outside the window: ODE
    logp, _, std = jax.jit(flow_grpo.step_means_and_logprobs, static_argnums=3)(
        runner.janus_params, runner.flow_params, rollout, runner.settings)
    np.testing.assert_allclose(logp, rollout.log_probs[1:3], atol=2e-4)
    assert std.shape == (2,) and bool(jnp.all(std > 0))


def test_updates_raise_the_probability_of_rewarded_transitions(flow_run):
    """Repeated updates on one rollout (wide clip) move each trained transition's log-prob in
    the direction of its image's advantage."""
    out = flow_run[1]
    runner = flow_grpo.FlowGRPORunner(_grpo_config(
        out["checkpoint"], 1, **{"grpo.clip_eps": 10.0, "optim.learning_rate": 3e-3}))
    rollout, texts, metadata = runner.rollout(0, runner.prompts.batch(0, runner.num_prompts))
    rw = runner.rewards(rollout, texts, metadata)
    streams, weights = rw.streams, rw.weights
    adv, keep = runner.advantages(streams, weights)
    batch = dict(rollout=rollout, old_logp=rollout.log_probs, adv=jnp.asarray(adv),
                 keep=jnp.asarray(keep))
    score = jax.jit(flow_grpo.step_means_and_logprobs, static_argnums=3)
    before = np.asarray(score(runner.janus_params, runner.flow_params, rollout, runner.settings)[0])
    for _ in range(3):
        runner.flow_params, runner.opt_state, _ = runner._update(
            runner.flow_params, runner.opt_state, runner.janus_params, None, batch, None)
    after = np.asarray(score(runner.janus_params, runner.flow_params, rollout, runner.settings)[0])
    change = (after - before).sum(axis=0)  # per image, over its trained steps
    assert np.corrcoef(change, adv)[0, 1] > 0.5, (change, adv)
    assert change[adv > 0].mean() > change[adv < 0].mean()


@pytest.fixture(scope="module")
def minibatch_runner(flow_run):
    """Flow-GRPO with 2 inner epochs x 2 minibatches, plain SGD and the KL term on."""
    return flow_grpo.FlowGRPORunner(_grpo_config(flow_run[1]["checkpoint"], 1, **{
        "grpo.minibatches": 2, "grpo.inner_epochs": 2, "grpo.beta": 0.04,
        "optim.name": "sgd", "optim.learning_rate": 0.3}))


def test_a_minibatch_step_equals_the_full_step_with_the_other_images_masked(minibatch_runner):
    """The gather inside the jitted update selects whole images: a step on rows R gives the same
    params as a step on the whole rollout with keep = 0 outside R (same loss denominators)."""
    runner = minibatch_runner
    rollout, texts, metadata = runner.rollout(0, runner.prompts.batch(0, runner.num_prompts))
    rw = runner.rewards(rollout, texts, metadata)
    streams, weights = rw.streams, rw.weights
    adv, keep = runner.advantages(streams, weights)
    first, stop = runner.window
    rows = np.array([0, 3, 5, 6], np.int32)
    masked_keep = np.zeros_like(keep)
    masked_keep[rows] = keep[rows]
    batch = dict(rollout=rollout, old_logp=rollout.log_probs[first:stop], adv=jnp.asarray(adv))
    start = jax.device_get(runner.flow_params)
    copy = lambda: jax.tree.map(jnp.asarray, start)  # noqa: E731 (the update donates its input)

    def step(keep_b, r):
        p, _, m = runner._update(copy(), runner.optimizer.init(start), runner.janus_params,
                                 runner.ref_flow_params, dict(batch, keep=jnp.asarray(keep_b)), r)
        return jax.device_get(p), m

    mini, m_mini = step(keep, rows)
    full, m_full = step(masked_keep, None)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(full),
                                                          jax.tree.leaves(start)))
    assert moved > 1e-4
    for a, b in zip(jax.tree.leaves(mini), jax.tree.leaves(full)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(float(m_mini["loss"]), float(m_full["loss"]), rtol=1e-5)


def test_inner_epochs_times_minibatches_steps_per_rollout(minibatch_runner, monkeypatch):
    """Each epoch splits a fresh shuffle of the 8 images into 2 shares; one compiled update;
    after the first step the ratio leaves 1, so the tight clip acts."""
    runner = minibatch_runner
    calls = []
    update = runner._update

    def recording(*args):
        calls.append(np.asarray(args[-1]))
        return update(*args)

    monkeypatch.setattr(runner, "_update", recording)
    compiled = update._cache_size()
    m = runner.iteration(1)
    assert len(calls) == 4 and all(len(r) == runner.batch_size // 2 for r in calls)
    for epoch in (calls[:2], calls[2:]):
        np.testing.assert_array_equal(np.sort(np.concatenate(epoch)), np.arange(runner.batch_size))
    assert not all(np.array_equal(a, b) for a, b in zip(calls[:2], calls[2:]))
    assert update._cache_size() - compiled <= 1  # four steps, at most one new compile
    assert m["clip_frac"] > 0 and "kl" in m


def test_flow_grpo_trains_checkpoints_and_resumes(flow_run, tmp_path):
    out = flow_run[1]
    first = flow_grpo.train(_grpo_config(out["checkpoint"], 2), tmp_path)
    assert first["steps"] == 2 and len(first["reward_per_step"]) == 2
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [0, 1]
    assert {"reward_mean", "clip_frac", "time_rollout", "time_update"} <= set(lines[0])
    again = flow_grpo.train(_grpo_config(out["checkpoint"], 3), tmp_path)
    assert again["start_step"] == 2 and len(again["reward_per_step"]) == 3
    jp0, _, _, fp0, _ = ckpt_lib.load_flow_checkpoint(out["checkpoint"])
    jp1, _, _, fp1, _ = ckpt_lib.load_flow_checkpoint(again["checkpoint"])
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), fp0, fp1)
    assert max(jax.tree.leaves(moved)) > 0
    for a, b in zip(jax.tree.leaves(jp0), jax.tree.leaves(jp1)):
        np.testing.assert_array_equal(a, b)


def test_flow_grpo_config_errors(flow_run, tmp_path):
    out = flow_run[1]
    with pytest.raises(UserError, match="noise_level > 0"):
        flow_grpo.FlowGRPORunner(_grpo_config(out["checkpoint"], 1,
                                              **{"sampling.noise_level": 0.0}))
    with pytest.raises(UserError, match="sde_window"):
        flow_grpo.FlowGRPORunner(_grpo_config(out["checkpoint"], 1, **{"grpo.sde_window": (2, 9)}))
    with pytest.raises(UserError, match="minibatches=3 must divide"):
        flow_grpo.FlowGRPORunner(_grpo_config(out["checkpoint"], 1, **{"grpo.minibatches": 3}))
    with pytest.raises(UserError, match="config.policy is empty"):
        flow_grpo.FlowGRPORunner(load_config("flow_grpo:tiny"))


def test_cli_samples_with_the_flow_decoder(flow_run, tmp_path, capsys):
    out = flow_run[1]
    rc = main(["sample", "--ckpt", out["checkpoint"], "--prompt", "a red circle", "--prompt",
               "a blue square", "--num-samples", "2", "--decoder", "flow", "--flow-steps", "3",
               "--cfg-weight", "2", "--out", str(tmp_path)])
    assert rc == 0
    lines = [json.loads(l) for l in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [l["prompt"] for l in lines] == ["a red circle"] * 2 + ["a blue square"] * 2
    assert all(len(l["image_tokens"]) == 64 for l in lines)
    assert (tmp_path / "grid.png").exists() and (tmp_path / lines[0]["file"]).exists()
