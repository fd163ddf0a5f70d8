"""Train state, its shardings, and the jitted (sharded, donated) training step.

A loss function has the signature

    loss_fn(params, batch, rng) -> (numerator, aux)
    aux = {'denominator': f32 scalar (independent of params),
           'metrics': {name: (numerator, denominator)}}

The step minimises sum(numerator) / sum(denominator) over the *global* batch and all
gradient-accumulation micro-batches, so the update is the same whatever the split (a token-mean
loss stays a token mean). Reported metrics are likewise sum(num) / sum(den). GRPO and the VQ
trainer reuse this step with their own loss functions.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from jaxgen import parallel
from jaxgen.errors import UserError
from jaxgen.train.xla_options import train_step_compiler_options

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@flax.struct.dataclass
class TrainState:
    """params (float32 master weights), opt_state, step (int32 scalar), rng (uint32[2])."""
    params: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array


def compute_dtype(name: str | None):
    if name is None:
        return None
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def create_state(params, optimizer: optax.GradientTransformation, rng) -> TrainState:
    return TrainState(params=params, opt_state=optimizer.init(params),
                      step=jnp.zeros((), jnp.int32), rng=jnp.asarray(rng, jnp.uint32))


def state_shardings(abstract_state: TrainState, param_logical_axes, mesh: Mesh,
                    layout: str) -> TrainState:
    """NamedShardings for every leaf of a TrainState (arrays or ShapeDtypeStructs)."""
    if param_logical_axes is None:
        param_logical_axes = parallel.default_logical_axes(abstract_state.params)
    p_sh = parallel.param_shardings(abstract_state.params, param_logical_axes, mesh, layout)
    o_sh = parallel.tree_shardings_like_params(abstract_state.opt_state, abstract_state.params,
                                               p_sh, mesh)
    rep = parallel.replicated(mesh)
    return TrainState(params=p_sh, opt_state=o_sh, step=rep, rng=rep)


def init_state(init_params_fn: Callable[[jax.Array], Any], optimizer, rng, mesh: Mesh,
               layout: str, param_logical_axes=None) -> tuple[TrainState, TrainState]:
    """Initialise params and optimizer state directly into their shardings.

    `init_params_fn(rng) -> params`. Returns (state, shardings). Nothing is materialised
    unsharded, so a model larger than one device's memory initialises.
    """
    init_rng, state_rng = jax.random.split(jnp.asarray(rng, jnp.uint32))

    def build(r):
        return create_state(init_params_fn(r), optimizer, state_rng)

    abstract = jax.eval_shape(build, init_rng)
    shardings = state_shardings(abstract, param_logical_axes, mesh, layout)
    state = jax.jit(build, out_shardings=shardings)(init_rng)
    return state, shardings


def shard_state(state: TrainState, mesh: Mesh, layout: str, param_logical_axes=None):
    """Place an existing state on the mesh. Returns (sharded state, shardings)."""
    shardings = state_shardings(state, param_logical_axes, mesh, layout)
    return parallel.shard_tree(state, shardings), shardings


def abstract_state(state_or_shapes, shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs with shardings (what a checkpoint restore needs)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                        state_or_shapes, shardings)


def cast_floating(tree, dtype):
    """Cast floating leaves to `dtype` (mixed precision: bf16 compute, f32 master weights)."""
    if dtype is None:
        return tree
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _split_micro(batch, accum_steps: int):
    """[B, ...] -> [accum, B/accum, ...] with micro-batch j = rows j, j+accum, ... so every
    device's contiguous block of rows contributes equally to each micro-batch."""
    def split(x):
        b = x.shape[0]
        x = x.reshape((b // accum_steps, accum_steps) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)
    return jax.tree.map(split, batch)


def unroll_accumulation_default(mesh: Mesh) -> bool:
    """Unroll the micro-batch loop on CPU devices, keep it a `lax.scan` elsewhere.

    XLA's CPU backend runs convolutions inside a while loop far slower than the same
    convolutions unrolled: the demo's VQ step in 2 micro-batches took 6.7-6.9 s as a scan
    against 0.41-0.48 s unrolled (0.50-0.62 s as one batch of 8; 2-core CPU, side by side,
    2026-12-01). On accelerators the scan bounds memory to one micro-batch's activations by
    construction, so it stays.
    """
    return mesh.devices.flat[0].platform == "cpu"


def _accumulate(loss_fn, params, batch, rng, accum_steps: int, mesh: Mesh | None,
                unroll: bool = False):
    """Sum of grads of the numerators and of aux sums over micro-batches (a scan; unrolled
    when `unroll`, the same body)."""
    grad_fn = jax.grad(lambda p, b, r: loss_fn(p, b, r), has_aux=True)
    if accum_steps == 1:
        grads, aux = grad_fn(params, batch, rng)
        return grads, aux
    micro = _split_micro(batch, accum_steps)
    bsh = parallel.batch_sharding(mesh) if mesh is not None else None

    def body(carry, xs):
        g_acc, aux_acc = carry
        mb, j = xs
        if bsh is not None:
            mb = jax.lax.with_sharding_constraint(mb, bsh)
        g, aux = grad_fn(params, mb, jax.random.fold_in(rng, j))
        return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, aux_acc, aux)), None

    mb0 = jax.tree.map(lambda x: x[0], micro)
    g_shape, aux_shape = jax.eval_shape(grad_fn, params, mb0, rng)
    zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)  # noqa: E731
    (grads, aux), _ = jax.lax.scan(body, (zeros(g_shape), zeros(aux_shape)),
                                   (micro, jnp.arange(accum_steps)),
                                   unroll=accum_steps if unroll else 1)
    return grads, aux


def make_train_step(loss_fn, optimizer: optax.GradientTransformation, shardings: TrainState,
                    mesh: Mesh, *, accum_steps: int = 1, compute_dtype_name: str | None = None,
                    learning_rate_fn: Callable | None = None, donate: bool = True,
                    layout: str = "fsdp", unroll_accumulation: bool | None = None):
    """jit(step)(state, batch) -> (state, metrics) with explicit in/out shardings.

    The state is donated (updated in place). `batch` leaves are batch-leading arrays sharded
    over ('data', 'fsdp'), and so are the model's activations (`layout`'s activation rules,
    parallel.activation_sharding). Gradients are float32 (params are cast to
    `compute_dtype_name` only inside the loss). `unroll_accumulation` unrolls the micro-batch
    loop (None: on CPU devices only, `unroll_accumulation_default`).
    """
    dtype = compute_dtype(compute_dtype_name)
    if unroll_accumulation is None:
        unroll_accumulation = unroll_accumulation_default(mesh)

    def wrapped_loss(params, batch, rng):
        with parallel.activation_sharding(mesh, layout):
            num, aux = loss_fn(cast_floating(params, dtype), batch, rng)
        aux = dict(aux)
        aux.setdefault("denominator", jnp.float32(1.0))
        aux.setdefault("metrics", {})
        return num, aux

    def step(state: TrainState, batch):
        step_rng = jax.random.fold_in(state.rng, state.step)
        grads, aux = _accumulate(wrapped_loss, state.params, batch, step_rng, accum_steps, mesh,
                                 unroll_accumulation)
        den = jnp.maximum(aux["denominator"], 1e-12)
        grads = jax.tree.map(lambda g: (g / den).astype(jnp.float32), grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {k: jnp.where(d > 0, n / jnp.maximum(d, 1e-12), 0.0)
                   for k, (n, d) in aux["metrics"].items()}
        metrics["grad_norm"] = optax.tree.norm(grads)
        if learning_rate_fn is not None:
            metrics["learning_rate"] = learning_rate_fn(state.step)
        new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
        return new_state, metrics

    rep = parallel.replicated(mesh)
    return jax.jit(step, in_shardings=(shardings, parallel.batch_sharding(mesh)),
                   out_shardings=(shardings, rep), donate_argnums=(0,) if donate else (),
                   compiler_options=train_step_compiler_options(mesh))


def make_eval_step(loss_fn, shardings: TrainState, mesh: Mesh,
                   compute_dtype_name: str | None = None):
    """jit(eval)(params, batch, rng) -> metrics (sum(num)/sum(den) per metric)."""
    dtype = compute_dtype(compute_dtype_name)

    def evaluate(params, batch, rng):
        _, aux = loss_fn(cast_floating(params, dtype), batch, rng)
        return {k: jnp.where(d > 0, n / jnp.maximum(d, 1e-12), 0.0)
                for k, (n, d) in aux.get("metrics", {}).items()}

    rep = parallel.replicated(mesh)
    return jax.jit(evaluate, in_shardings=(shardings.params, parallel.batch_sharding(mesh), rep),
                   out_shardings=rep)


def sharded_bytes_fraction(tree) -> float:
    """max over devices of resident bytes / logical bytes (1.0 = fully replicated)."""
    per_dev = parallel.bytes_per_device(tree)
    return max(per_dev.values()) / max(parallel.tree_bytes(tree), 1)


__all__ = ["TrainState", "create_state", "state_shardings", "init_state", "shard_state",
           "abstract_state", "make_train_step", "make_eval_step", "cast_floating",
           "sharded_bytes_fraction", "NamedSharding"]
