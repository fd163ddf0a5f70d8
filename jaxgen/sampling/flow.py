"""Samplers for the flow-matching (rectified flow) decoder: the Euler ODE and Flow-GRPO's SDE.

Convention: x_t = (1 - t) x0 + t eps with eps ~ N(0, I), and the network predicts the velocity
v = eps - x0. Sampling integrates from t = 1 (noise) to t = 0 (data) on a grid `ts` [T + 1], so
every step has dt = t_next - t < 0.

Why an SDE: GRPO needs a stochastic policy whose per-step likelihood it can recompute under new
parameters. The ODE x_next = x + v dt is deterministic, so it has no log-probs. Flow-GRPO swaps it
for the reverse SDE that has the ODE's marginals at every t,

    dx = [v + sigma_t^2 / (2 t) (x + (1 - t) v)] dt + sigma_t dw,

where x + (1 - t) v = E[eps | x] = -t * score for this interpolation path, so the extra drift is
the -sigma^2 / 2 * score correction that offsets the injected noise. An Euler-Maruyama step is a
Gaussian N(mean, std^2) with std = sigma_t sqrt(-dt), whose log-density is the step's log-prob
(per element, averaged over all non-batch dims as Flow-GRPO does, so its scale does not grow with
the image size). sigma_t = noise_level * sqrt(t / (1 - t)) blows up at t = 1; as in Flow-GRPO's
reference code (`sd3_sde_with_logprob.py`) the t in the denominator is replaced there by the grid's
second timestep t_cap = ts[1], giving noise_level / sqrt(1 - t_cap) at the first step.

Flow-GRPO-Fast / MixGRPO train only a window of steps: `sample(..., sde_steps=mask)` makes the
other steps plain ODE steps with log-prob 0, which keeps shapes fixed (nothing recompiles when the
window moves, if the mask is passed as an array).

Everything here is a pure jnp function usable inside jit; Python-level checks raise UserError
only on static (concrete) inputs.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import UserError

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class FlowSample(NamedTuple):
    """One `sample` call with T steps on a batch of B."""
    x0: jnp.ndarray  # f32 [B, ...]: the final sample (= latents[-1])
    latents: jnp.ndarray  # f32 [T + 1, B, ...]: x at every grid point, latents[0] = the noise x1
    log_probs: jnp.ndarray  # f32 [T, B]: each step's log-prob (0 for ODE steps)


def _concrete(a):
    """a as a NumPy array, or None when it is traced (its value is unknown at trace time)."""
    try:
        return np.asarray(a)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


# ---------------------------------------------------------------------------------------------
# The grid.

def timesteps(num_steps: int, shift: float = 1.0) -> jnp.ndarray:
    """float32 [num_steps + 1] from 1.0 down to 0.0.

    Evenly spaced, then SD3's shift t' = shift t / (1 + (shift - 1) t) (shift > 1 spends more
    steps at high noise; shift = 1 is the identity). Computed in float64 so the endpoints are
    exactly 1 and 0 after the cast.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise UserError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if num_steps < 1:
        raise UserError(f"num_steps must be >= 1, got {num_steps}")
    shift = float(shift)
    if not (math.isfinite(shift) and shift > 0):
        raise UserError(f"shift must be a finite number > 0 (1 = no shift), got {shift}")
    t = np.linspace(1.0, 0.0, num_steps + 1, dtype=np.float64)
    t = shift * t / (1.0 + (shift - 1.0) * t)
    return jnp.asarray(t, jnp.float32)


def _check_grid(ts) -> int:
    """Number of steps T of a grid [T + 1]; its values are checked when they are concrete."""
    shape = np.shape(ts)
    if len(shape) != 1 or shape[0] < 2:
        raise UserError(f"timesteps must be a 1-D grid of at least 2 points (1 ... 0), got "
                        f"shape {shape}; build one with timesteps(num_steps, shift)")
    values = _concrete(ts)
    if values is not None:
        values = values.astype(np.float64)
        if values[0] != 1.0 or values[-1] != 0.0 or not np.all(np.diff(values) < 0):
            raise UserError(f"timesteps must decrease strictly from 1.0 to 0.0, got "
                            f"{np.array2string(values, precision=4, threshold=8)}; "
                            f"build them with timesteps(num_steps, shift)")
    return shape[0] - 1


def _check_noise_level(noise_level, positive: bool = False):
    value = _concrete(noise_level)
    if value is None:
        return
    if value.shape != () or not np.isfinite(value) or value < 0 or (positive and value == 0):
        need = "> 0" if positive else ">= 0 (0: the ODE)"
        raise UserError(f"noise_level must be a finite scalar {need}, got {noise_level!r} "
                        f"(Flow-GRPO uses 0.7)")


# ---------------------------------------------------------------------------------------------
# One SDE step.

def sde_sigma(t, t_cap, noise_level):
    """sigma_t = noise_level * sqrt(t / (1 - t)), with 1 - t_cap in place of 1 - t where t == 1.

    All arguments broadcast. Only the denominator is capped (Flow-GRPO's reference), so the first
    step keeps t = 1 in the numerator and sigma there is noise_level / sqrt(1 - t_cap).
    """
    t = jnp.asarray(t, jnp.float32)
    denom = 1.0 - jnp.where(t == 1.0, jnp.asarray(t_cap, jnp.float32), t)
    return noise_level * jnp.sqrt(t / denom)


def sde_step_mean_std(x, v, t, t_next, *, noise_level, t_cap):
    """Mean [like x] and std (broadcastable to x) of one Euler-Maruyama step of the SDE.

    x, v [B, ...]; t, t_next scalars or arrays broadcastable to x (e.g. [B, 1, 1, 1] for one t per
    row), with t > 0 and t_next < t. mean = x + [v (1 + sigma^2 (1 - t) / (2 t))
    + x sigma^2 / (2 t)] dt, std = sigma sqrt(-dt).
    """
    x = jnp.asarray(x, jnp.float32)
    v = jnp.asarray(v, jnp.float32)
    t = jnp.asarray(t, jnp.float32)
    dt = jnp.asarray(t_next, jnp.float32) - t
    sigma = sde_sigma(t, t_cap, noise_level)
    half_var_over_t = jnp.square(sigma) / (2.0 * t)
    mean = x + (v * (1.0 + half_var_over_t * (1.0 - t)) + x * half_var_over_t) * dt
    std = sigma * jnp.sqrt(-dt)
    return mean, std


def gaussian_step_logprob(x_next, mean, std):
    """log N(x_next; mean, std^2) per element, averaged over all non-batch dims: f32 [B]."""
    x_next = jnp.asarray(x_next, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    per_elem = (-jnp.square(x_next - mean) / (2.0 * jnp.square(std))
                - jnp.log(std) - _LOG_SQRT_2PI)
    per_elem = jnp.broadcast_to(per_elem, x_next.shape)  # a scalar std must not shrink the shape
    return per_elem.mean(axis=tuple(range(1, x_next.ndim)))


def step_logprob(x, x_next, v, t, t_next, *, noise_level, t_cap):
    """Log-prob [B] of the transition x -> x_next under the SDE step with velocity v.

    What GRPO recomputes under the new policy: with the v that `sample` used, it is the stored
    log_prob (same arithmetic, same order) up to XLA fusing it differently: a 1-ulp change of the
    mean moves it by ~|z| ulp(x) / std, about 2e-5 at std = 0.007 (the last of 100 steps), 1e-6
    where std >= 0.1. Shapes as in `sde_step_mean_std`.
    """
    _check_noise_level(noise_level, positive=True)
    mean, std = sde_step_mean_std(x, v, t, t_next, noise_level=noise_level, t_cap=t_cap)
    return gaussian_step_logprob(x_next, mean, std)


# ---------------------------------------------------------------------------------------------
# The sampler.

def _stochastic_mask(sde_steps, num_steps: int):
    """bool [T] of which steps draw noise (all when sde_steps is None)."""
    if sde_steps is None:
        return jnp.ones((num_steps,), bool)
    shape = np.shape(sde_steps)
    if shape != (num_steps,):
        raise UserError(f"sde_steps must hold one flag per step, shape ({num_steps},), got "
                        f"shape {shape}")
    return jnp.asarray(sde_steps).astype(bool)


def sample(velocity_fn: Callable, x1, ts, *, rng=None, noise_level=0.0,
           sde_steps=None) -> FlowSample:
    """Integrate from the noise x1 [B, ...] at ts[0] = 1 to ts[-1] = 0 (T = len(ts) - 1 steps).

    velocity_fn(x [B, ...], t_b f32 [B]) -> v [B, ...] (classifier-free guidance goes inside it).
    noise_level == 0 or rng None: the Euler ODE, log_probs all 0. Otherwise Flow-GRPO's SDE;
    sde_steps (bool [T], array or tuple) picks the stochastic steps, the others are ODE steps with
    log-prob 0. Step k draws its noise from fold_in(rng, k), so a sample is reproducible and a
    step's noise does not depend on which other steps are stochastic. Call it under jit: eagerly,
    every call traces and compiles its scan afresh (the body is a new closure each time).
    """
    num_steps = _check_grid(ts)
    _check_noise_level(noise_level)
    x1 = jnp.asarray(x1, jnp.float32)
    if x1.ndim < 1:
        raise UserError(f"x1 must be [batch, ...], got shape {x1.shape}")
    stochastic_k = _stochastic_mask(sde_steps, num_steps)
    level = _concrete(noise_level)
    ode_only = rng is None or (level is not None and float(level) == 0.0)

    ts = jnp.asarray(ts, jnp.float32)
    t_cap = ts[1]
    batch = x1.shape[0]

    def step(x, inputs):
        k, t, t_next, stochastic = inputs
        v = jnp.asarray(velocity_fn(x, jnp.full((batch,), t, jnp.float32)), jnp.float32)
        x_ode = x + v * (t_next - t)
        if ode_only:
            return x_ode, (x_ode, jnp.zeros((batch,), jnp.float32))
        mean, std = sde_step_mean_std(x, v, t, t_next, noise_level=noise_level, t_cap=t_cap)
        z = jax.random.normal(jax.random.fold_in(rng, k), x.shape, jnp.float32)
        x_sde = mean + std * z
        # From x_sde, not z: the same arithmetic as step_logprob's recomputation.
        logp = gaussian_step_logprob(x_sde, mean, std)
        x_next = jnp.where(stochastic, x_sde, x_ode)
        return x_next, (x_next, jnp.where(stochastic, logp, 0.0))

    xs = (jnp.arange(num_steps, dtype=jnp.int32), ts[:-1], ts[1:], stochastic_k)
    x0, (path, log_probs) = jax.lax.scan(step, x1, xs)
    latents = jnp.concatenate([x1[None], path], axis=0)
    return FlowSample(x0=x0, latents=latents, log_probs=log_probs)
