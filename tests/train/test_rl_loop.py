"""The RL loop (jaxgen.train.loop.run_rl) of both paths, GRPO and Flow-GRPO: a SIGTERM mid-iteration
saves and a rerun ends with the same parameters as an uninterrupted run; a NaN stops the run with
a clear message and keeps the last good checkpoint."""

import json
import os
import signal

import jax
import numpy as np
import pytest

from jaxgen import checkpoint as ckpt_lib
from jaxgen.rewards import register_reward
from jaxgen.train import flow_grpo, grpo
from jaxgen.train.loop import NonFiniteLossError
from tests.helpers import rl_test_setup as setup

# The probe reward's plan: on its call number `at` (one call per iteration) do `what`.
PLAN = {"at": None, "what": None, "calls": 0}


@register_reward("loop_probe")
def _loop_probe(context):
    def reward(batch):
        n = PLAN["calls"]
        PLAN["calls"] += 1
        if n == PLAN["at"] and PLAN["what"] == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-iteration, before the update
        if n == PLAN["at"] and PLAN["what"] == "nan":
            return np.full(len(batch), np.nan, np.float32)
        return np.zeros(len(batch), np.float32)
    return reward


def _arm(at=None, what=None):
    PLAN.update(at=at, what=what, calls=0)


def _with_probe(config, steps):
    config.total_steps = steps
    config.checkpoint_every = 2
    config.rewards = {"op": "sum", "terms": [dict(config.rewards), {"name": "loop_probe"}]}
    return config


def _grpo(tmp_path, policy, steps):
    config = _with_probe(setup.grpo_config(False, ["--config.grpo.prompts_per_step=2"]), steps)
    return grpo.train(config, tmp_path, policy=policy)


def _flow(tmp_path, policy_dir, steps):
    config = _with_probe(setup.flow_config(policy_dir, ["--config.grpo.prompts_per_step=2"]),
                         steps)
    return flow_grpo.train(config, tmp_path)


@pytest.fixture(scope="module")
def policy():
    return setup.grpo_policy()


@pytest.fixture(scope="module")
def flow_policy(tmp_path_factory):
    return setup.flow_policy(str(tmp_path_factory.mktemp("flow_policy")))


def _final_params(path):
    return jax.device_get(ckpt_lib.load_checkpoint(path)[0])


def _flow_params(path):
    return jax.device_get(ckpt_lib.load_flow_checkpoint(path)[3])


def _assert_equal_trees(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("path", ["grpo", "flow_grpo"])
def test_sigterm_saves_and_resumes_to_the_uninterrupted_parameters(path, tmp_path, policy,
                                                                   flow_policy):
    run = (lambda d, n: _grpo(d, policy, n)) if path == "grpo" else \
        (lambda d, n: _flow(d, flow_policy, n))
    read = _final_params if path == "grpo" else _flow_params
    key = "policy_checkpoint" if path == "grpo" else "checkpoint"
    _arm()
    whole = run(tmp_path / "whole", 4)
    assert whole["status"] == "done"

    _arm(at=2, what="sigterm")  # during iteration 2: it finishes, then the loop saves step 3
    cut = run(tmp_path / "cut", 4)
    assert cut["status"] == "preempted" and cut["step"] == 3 and key not in cut
    assert not (tmp_path / "cut" / "final").exists()
    assert ckpt_lib.CheckpointManager(tmp_path / "cut" / "checkpoints").all_steps()[-1] == 3
    _arm()
    resumed = run(tmp_path / "cut", 4)
    assert resumed["status"] == "done" and resumed["start_step"] == 3
    _assert_equal_trees(read(resumed[key]), read(whole[key]))
    steps = [json.loads(x)["step"] for x in
             (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]
    assert resumed["reward_per_step"] == whole["reward_per_step"]


@pytest.mark.parametrize("path", ["grpo", "flow_grpo"])
def test_nan_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(path, tmp_path, policy,
                                                                          flow_policy):
    run = (lambda d, n: _grpo(d, policy, n)) if path == "grpo" else \
        (lambda d, n: _flow(d, flow_policy, n))
    _arm(at=3, what="nan")  # iteration 3's rewards are NaN, so are its advantages and loss
    with pytest.raises(NonFiniteLossError, match=r"became nan at step 3; the last good "
                                                 r"checkpoint \(step 2\) is kept"):
        run(tmp_path / "run", 6)
    assert ckpt_lib.CheckpointManager(tmp_path / "run" / "checkpoints").all_steps() == [2]
    assert not (tmp_path / "run" / "final").exists()
    logged = [json.loads(x)["step"] for x in
              (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [0, 1, 2]  # the NaN iteration is not logged as a good one
