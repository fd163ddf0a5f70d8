"""Gradient accumulation: the micro-batch loop as a scan and unrolled gives the update of the
whole batch, and on CPU devices the default is the unrolled loop (XLA's CPU backend ran the VQ
step's convolutions ~15x slower inside the scan's while loop)."""

import jax
import numpy as np

from jaxgen import parallel
from jaxgen.config import load_config
from jaxgen.train import optim, vq
from jaxgen.train import state as state_lib


def _vq_steps(config, mesh, batches, accum, unroll):
    rng = jax.random.PRNGKey(0)
    axes = vq.logical_axes_from_boxed(jax.eval_shape(
        lambda r: vq.init_vq_train_params(config, r), rng))
    opt = optim.make_optimizer(config)
    state, shardings = state_lib.init_state(
        lambda r: vq._unbox(vq.init_vq_train_params(config, r)), opt, rng, mesh, "dp", axes)
    step = state_lib.make_train_step(vq.make_loss_fn(config), opt, shardings, mesh,
                                     accum_steps=accum, unroll_accumulation=unroll)
    hlo = step.lower(state, parallel.shard_batch(batches[0], mesh)).compile().as_text()
    losses = []
    for b in batches:
        state, metrics = step(state, parallel.shard_batch(b, mesh))
        losses.append(float(metrics["loss"]))
    return jax.device_get(state.params), losses, hlo


def test_scanned_and_unrolled_accumulation_match_the_whole_batch():
    config = load_config("vq:tiny")
    # SGD: the update is the gradient itself (Adam's first steps divide tiny gradients by their
    # own size and turn rounding into visible parameter changes)
    config.optim.name, config.optim.warmup_steps = "sgd", 0
    mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    assert state_lib.unroll_accumulation_default(mesh)  # a CPU mesh
    rng = np.random.default_rng(0)
    size = int(config.model.vq.image_size)
    batches = [{"image": rng.uniform(-1, 1, (4, size, size, 3)).astype(np.float32),
                "step": np.full((4,), i, np.int32)} for i in range(2)]
    whole, whole_losses, _ = _vq_steps(config, mesh, batches, 1, False)
    for unroll in (False, True):
        params, losses, hlo = _vq_steps(config, mesh, batches, 2, unroll)
        np.testing.assert_allclose(losses, whole_losses, rtol=1e-5)
        diff = max(float(np.max(np.abs(a - b))) for a, b in
                   zip(jax.tree.leaves(params), jax.tree.leaves(whole)))
        assert diff < 1e-5, (unroll, diff)
        # the scan compiles to a while loop; unrolled, the micro-batches are straight-line code
        assert (" while(" in hlo) != unroll, unroll
