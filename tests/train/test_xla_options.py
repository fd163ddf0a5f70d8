"""Training steps compile with YNNPACK dot fusion on CPU (jaxgen/train/xla_options.py): the
option reaches XLA, yields to a user's own flag, and trains the same model as XLA's defaults."""

import jax
import numpy as np

from jaxgen import parallel
from jaxgen.bench import sft as bench_sft
from jaxgen.config import load_config
from jaxgen.models import janus
from jaxgen.train import optim, sft_loss, xla_options
from jaxgen.train import state as state_lib


def _sft_run(monkeypatch, use_options, steps=3):
    """(losses, params, compiled HLO text) of `steps` SFT steps on a tiny Janus model."""
    if not use_options:
        monkeypatch.setattr(xla_options, "CPU_TRAIN_STEP_OPTIONS", {})
    mc = janus.config_from_configdict(load_config("janus:tiny"))
    cfg = bench_sft.step_config(1e-3)
    opt = optim.make_optimizer(cfg, total_steps=10)
    mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    params = janus.init_params(mc, jax.random.PRNGKey(0))
    state, shardings = state_lib.shard_state(
        state_lib.create_state(params, opt, jax.random.PRNGKey(1)), mesh, "fsdp",
        janus.param_logical_axes(mc))
    batch = bench_sft.synthetic_batch(mc, 4, 24, seed=0)
    step = state_lib.make_train_step(
        sft_loss.make_loss_fn(mc, cfg, sft_loss.head_capacities([batch])), opt, shardings, mesh)
    dev_batch = parallel.shard_batch(batch, mesh)
    hlo = step.lower(state, dev_batch).compile().as_text()
    losses = []
    for _ in range(steps):
        state, metrics = step(state, dev_batch)
        losses.append(float(metrics["loss"]))
    return np.array(losses), jax.device_get(state.params), hlo


def test_cpu_options_and_a_users_flag_wins(monkeypatch):
    mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert xla_options.train_step_compiler_options(mesh) == {
        "xla_cpu_experimental_ynn_fusion_type":
            "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
    assert xla_options.train_step_compiler_options(mesh) is None


def test_fused_dots_train_the_same_model(monkeypatch):
    losses, params, hlo = _sft_run(monkeypatch, use_options=True)
    with monkeypatch.context() as m:
        ref_losses, ref_params, ref_hlo = _sft_run(m, use_options=False)
    assert hlo != ref_hlo  # the option reached XLA
    assert losses[-1] < losses[0]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    diff = max(float(np.max(np.abs(a - b))) for a, b in
               zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)))
    assert diff < 1e-5, diff
