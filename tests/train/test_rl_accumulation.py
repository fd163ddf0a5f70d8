"""Gradient accumulation in the GRPO and Flow-GRPO updates (`grpo.grad_accum_steps`): summing
the micro-batches' gradients gives the whole-minibatch update to float32 rounding."""

import jax
import numpy as np
import pytest

from jaxgen.errors import UserError
from jaxgen.train import flow_grpo, grpo
from tests.helpers import rl_test_setup as setup


def _capture_update(runner, monkeypatch):
    """Run one iteration of `runner`, keeping the batch its update received."""
    seen = {}
    real = runner.update

    def update(batch, iteration):
        seen["batch"] = batch
        return real(batch, iteration)

    monkeypatch.setattr(runner, "update", update)
    runner.iteration(0)
    return seen["batch"]


def _assert_close(a, b):
    for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
def test_grpo_accumulated_update_equals_the_whole_minibatch(aggregation, monkeypatch):
    policy = setup.grpo_policy()
    extra = ["--config.grpo.prompts_per_step=4", f"--config.grpo.loss.aggregation={aggregation}",
             "--config.optim.learning_rate=0.3"]
    whole = grpo.GRPORunner(setup.grpo_config(False, extra), policy=policy)
    accum = grpo.GRPORunner(setup.grpo_config(False, extra + ["--config.grpo.grad_accum_steps=4"]),
                            policy=policy)
    batch = _capture_update(whole, monkeypatch)  # 16 rows, 2 minibatches of 8, 4 micro-batches
    metrics = accum.update(batch, 0)
    before = jax.device_get(policy[0])
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                zip(jax.tree.leaves(jax.device_get(whole.params)), jax.tree.leaves(before)))
    assert moved > 1e-4  # the update is not a no-op, so the comparison means something
    _assert_close(accum.params, whole.params)
    assert np.isfinite(metrics["loss"])


def test_flow_grpo_accumulated_update_equals_the_whole_minibatch(tmp_path, monkeypatch):
    policy = setup.flow_policy(str(tmp_path))
    extra = ["--config.grpo.prompts_per_step=2"]
    whole = flow_grpo.FlowGRPORunner(setup.flow_config(policy, extra))
    accum = flow_grpo.FlowGRPORunner(setup.flow_config(
        policy, extra + ["--config.grpo.grad_accum_steps=2"]))
    batch = _capture_update(whole, monkeypatch)  # 8 images, 2 minibatches of 4, 2 micro-batches
    before = jax.device_get(accum.flow_params)
    accum.update(batch, 0)
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                zip(jax.tree.leaves(jax.device_get(whole.flow_params)), jax.tree.leaves(before)))
    assert moved > 1e-5
    _assert_close(accum.flow_params, whole.flow_params)


def test_accumulation_steps_must_divide_the_minibatch():
    config = setup.grpo_config(False, ["--config.grpo.prompts_per_step=4",
                                       "--config.grpo.grad_accum_steps=3"])
    with pytest.raises(UserError, match="grad_accum_steps=3 must be >= 1 and divide the 8 rows"):
        grpo.GRPORunner(config, policy=setup.grpo_policy())
