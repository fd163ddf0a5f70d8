"""A stage run in a child process with the CPU split into two JAX devices (jaxgen/cpu_devices.py),
as the demo's VQ stage runs on a CPU host: same model as in this process, clear errors."""

import json

import ml_collections
import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxgen import checkpoint as ckpt_lib, cpu_devices, demo
from jaxgen.config import load_config
from jaxgen.errors import UserError
from jaxgen.train import grpo, vq


def _tiny_vq(*overrides):
    # SGD: the update is the gradient itself (Adam's first steps divide tiny gradients, such as
    # the attention key biases' rounding-only ones, by their own size)
    return load_config("vq:tiny", ["--config.total_steps=3", "--config.data.heldout_size=4",
                                   "--config.train.ckpt_every=3", "--config.optim.name=sgd",
                                   "--config.optim.warmup_steps=0", *overrides])


def test_two_device_child_trains_the_same_vq_as_this_process(tmp_path):
    if not cpu_devices.cpu_split_applies(2):
        pytest.skip("needs a single-device CPU process on a machine with >= 2 cores")
    here = vq.train(_tiny_vq(), tmp_path / "here")
    # through the demo's stage function, as `jaxgen demo` calls it
    config = ml_collections.ConfigDict(dict(vq=_tiny_vq(), cpu_devices=dict(vq=2)))
    child = demo._vq(config, {"vq": tmp_path / "child"})
    assert child["cpu_devices"] == 2 and child["status"] == "done" and child["step"] == 3
    # the batch sharded over two devices is the same update to float32 rounding
    np.testing.assert_allclose(child["psnr"], here["psnr"], rtol=1e-5)
    a, b = load_file(here["params_path"]), load_file(child["params_path"])
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], atol=1e-5, err_msg=name)


def test_device_count_flag_replaces_only_its_own(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_dump_to=/d")
    assert cpu_devices.xla_flags_with_devices(2) == (
        "--xla_dump_to=/d --xla_force_host_platform_device_count=2")
    assert cpu_devices.xla_flags_with_devices(4, flags="") == (
        "--xla_force_host_platform_device_count=4")


def test_child_failure_is_one_clear_error(tmp_path):
    bad = _tiny_vq("--config.batch_size=3")  # does not divide over two devices
    with pytest.raises(UserError, match=r"2-device child process \(exit code 2"):
        cpu_devices.run_with_cpu_devices("jaxgen.train.vq:train", bad, tmp_path / "vq", 2)


def test_demo_grpo_stage_runs_data_parallel_in_a_two_device_child(tmp_path, policy):
    """The demo's GRPO stage on a CPU host: a child with two devices, the demo's data-parallel
    mesh; its first rollout and rewards are the in-process run's (the sampler's draws do not
    depend on how the batch is split)."""
    if not cpu_devices.cpu_split_applies(2):
        pytest.skip("needs a single-device CPU process on a machine with >= 2 cores")
    c = load_config("grpo:tiny", ["--config.total_steps=2", "--config.checkpoint_every=2",
                                  "--config.sampling.max_think_tokens=2"])
    c.rewards = {"name": "vq_consistency"}  # the demo's on-device term: varies per sample
    c.mesh = load_config("configs/demo.py").grpo.mesh  # data-parallel over every device
    for stage in ("sft", "judge"):  # the tiny random policy (tests/train/conftest.py)
        ckpt_lib.save_checkpoint(tmp_path / "demo" / stage / "final", *policy)
    here = grpo.train(demo.grpo_stage_config(ml_collections.ConfigDict(dict(grpo=c)),
                                             tmp_path / "demo"), tmp_path / "here")
    config = ml_collections.ConfigDict(dict(grpo=c, cpu_devices=dict(grpo=2)))
    child = demo._grpo(config, {"grpo": tmp_path / "demo" / "grpo"})
    assert child["cpu_devices"] == 2 and child["steps"] == 2
    rows = [json.loads(x) for x in
            (tmp_path / "demo" / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    assert 0.0 < here["reward_per_step"][0] < 1.0
    np.testing.assert_allclose(child["reward_per_step"][0], here["reward_per_step"][0], rtol=1e-6)
