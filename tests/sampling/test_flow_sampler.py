"""Flow-matching samplers: the SDE step against NumPy / SciPy, the ODE's and SDE's marginals on
Gaussian data (where the exact velocity is analytic), log-prob recomputation, determinism, the
stochastic-step mask, the timestep grid, argument errors and compilation under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxgen.errors import UserError
from jaxgen.sampling import flow

NOISE = 0.7

# Gaussian data x0 ~ N(MU, S^2) per dimension (4 dims with different means and scales).
MU = np.array([0.5, -1.0, 2.0, 0.0])
S = np.array([0.3, 1.0, 0.5, 2.0])


def gaussian_velocity(x_bd, t_b):
    """The exact v = E[eps | x_t] - E[x0 | x_t] for x0 ~ N(MU, S^2): x_t is jointly Gaussian."""
    t = t_b[:, None]
    mu, s2 = jnp.asarray(MU, jnp.float32), jnp.asarray(S ** 2, jnp.float32)
    var = (1 - t) ** 2 * s2 + t ** 2
    d = x_bd - (1 - t) * mu
    e_x0 = mu + (1 - t) * s2 * d / var
    e_eps = t * d / var
    return e_eps - e_x0


def np_mean_std(x, v, t, t_next, noise_level, t_cap):
    """Flow-GRPO's SDE step in float64 NumPy, written from the formulas (t may be per row)."""
    x, v = np.asarray(x, np.float64), np.asarray(v, np.float64)
    t, t_next = np.asarray(t, np.float64), np.asarray(t_next, np.float64)
    t_den = np.where(t == 1.0, np.float64(t_cap), t)
    sigma = noise_level * np.sqrt(t / (1.0 - t_den))
    dt = t_next - t
    mean = x + (v * (1 + sigma ** 2 * (1 - t) / (2 * t)) + x * sigma ** 2 / (2 * t)) * dt
    return mean, sigma * np.sqrt(-dt)


def np_logprob(x_next, mean, std):
    """scipy's Gaussian log-density per element, averaged over the non-batch dims."""
    lp = stats.norm.logpdf(np.asarray(x_next, np.float64), mean, std)
    lp = np.broadcast_to(lp, np.shape(x_next))
    return lp.reshape(lp.shape[0], -1).mean(axis=1)


# ---------------------------------------------------------------------------------------------
# 1. The step against NumPy / SciPy.

@pytest.mark.parametrize("k", [0, 4, 9], ids=["t=1 (t_cap)", "middle", "last, to t=0"])
def test_sde_step_and_logprob_match_numpy(k):
    ts = flow.timesteps(10, shift=3.0)
    ts_np = np.asarray(ts, np.float64)
    t, t_next, t_cap = ts_np[k], ts_np[k + 1], ts_np[1]
    rng = np.random.default_rng(k)
    x = rng.normal(size=(3, 4, 4, 2)).astype(np.float32)
    v = rng.normal(size=x.shape).astype(np.float32)

    mean, std = flow.sde_step_mean_std(x, v, ts[k], ts[k + 1], noise_level=NOISE, t_cap=ts[1])
    mean_ref, std_ref = np_mean_std(x, v, t, t_next, NOISE, t_cap)
    np.testing.assert_allclose(np.asarray(mean), mean_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(std), std_ref, rtol=1e-5)
    if k == 0:  # the capped sigma: noise_level / sqrt(1 - ts[1]) (numerator t = 1)
        np.testing.assert_allclose(float(flow.sde_sigma(ts[0], ts[1], NOISE)),
                                   NOISE / np.sqrt(1 - t_cap), rtol=1e-6)

    x_next = (mean_ref + std_ref * rng.normal(size=x.shape)).astype(np.float32)
    logp = flow.gaussian_step_logprob(x_next, mean, std)
    assert logp.shape == (3,)
    np.testing.assert_allclose(np.asarray(logp), np_logprob(x_next, mean_ref, std_ref), rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(flow.step_logprob(x, x_next, v, ts[k], ts[k + 1], noise_level=NOISE,
                                     t_cap=ts[1])),
        np_logprob(x_next, mean_ref, std_ref), rtol=1e-5)


def test_sde_step_with_one_timestep_per_row():
    """t as [B, 1, 1, 1] (rows at different steps, as the GRPO update batches them)."""
    ts = flow.timesteps(8)
    rows = np.array([0, 3, 7])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 2, 2, 3)).astype(np.float32)
    v = rng.normal(size=x.shape).astype(np.float32)
    t, t_next = ts[rows][:, None, None, None], ts[rows + 1][:, None, None, None]
    mean, std = flow.sde_step_mean_std(x, v, t, t_next, noise_level=NOISE, t_cap=ts[1])
    mean_ref, std_ref = np_mean_std(x, v, np.asarray(t), np.asarray(t_next), NOISE,
                                    float(ts[1]))
    np.testing.assert_allclose(np.asarray(mean), mean_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(std), std_ref, rtol=1e-5)
    x_next = (mean_ref + std_ref * rng.normal(size=x.shape)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(flow.gaussian_step_logprob(x_next, mean, std)),
                               np_logprob(x_next, mean_ref, std_ref), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# 2. Marginals on Gaussian data.

N_ROWS = 20_000
N_STEPS = 100
# Tolerances, in units of the target's scale. Monte Carlo: the standard error of a mean of
# 20000 rows is 1 / sqrt(20000) = 0.0071 of the std, that of a std 1 / sqrt(40000) = 0.005 of it;
# 4 standard errors = 0.028 / 0.02. Discretisation: Euler with 100 steps shrinks the final std by
# up to 2.0% here (exact, test_ode_is_the_composed_euler_map), the SDE's Euler-Maruyama steps
# widen the latents by up to ~2% (its error is also O(1/T): 5% at 10 steps).
MEAN_TOL = 0.04
STD_TOL = 0.045


@pytest.fixture(scope="module")
def gaussian_runs():
    ts = flow.timesteps(N_STEPS)
    x1 = jax.random.normal(jax.random.key(0), (N_ROWS, 4), jnp.float32)
    ode = flow.sample(gaussian_velocity, x1, ts)
    sde = flow.sample(gaussian_velocity, x1, ts, rng=jax.random.key(1), noise_level=NOISE)
    return ts, x1, ode, sde


def _euler_affine_map(ts):
    """(a, b) [4] with ODE-Euler(x1) = a x1 + b exactly (float64): v is affine in x per dim."""
    a, b = np.ones(4), np.zeros(4)
    for t, t_next in zip(ts[:-1], ts[1:]):
        var = (1 - t) ** 2 * S ** 2 + t ** 2
        slope = (t - (1 - t) * S ** 2) / var  # v = slope * (x - (1 - t) MU) - MU
        step_a = 1 + slope * (t_next - t)
        step_b = (-slope * (1 - t) * MU - MU) * (t_next - t)
        a, b = step_a * a, step_a * b + step_b
    return a, b


def test_ode_is_the_composed_euler_map(gaussian_runs):
    ts, x1, ode, _ = gaussian_runs
    a, b = _euler_affine_map(np.asarray(ts, np.float64))
    # Every row is the deterministic Euler map of its noise (float32 rounding over 100 steps).
    np.testing.assert_allclose(np.asarray(ode.x0), a * np.asarray(x1) + b, rtol=0, atol=2e-5)
    # The discrete map's output distribution N(b, a^2) is within the discretisation allowance.
    assert np.all(np.abs(b - MU) <= 1e-3 * S), b
    bias = np.abs(a / S - 1)
    assert np.all(bias <= 0.025) and bias.max() > 1e-3, bias  # Euler's O(1/T) shrinkage is real


def test_ode_and_sde_reach_the_data_distribution(gaussian_runs):
    _, _, ode, sde = gaussian_runs
    for name, out in (("ode", ode), ("sde", sde)):
        x0 = np.asarray(out.x0, np.float64)
        mean_err = np.abs(x0.mean(0) - MU) / S
        std_err = np.abs(x0.std(0) / S - 1)
        assert np.all(mean_err < MEAN_TOL), (name, mean_err)
        assert np.all(std_err < STD_TOL), (name, std_err)
    # Same marginals, different samples: the SDE moves every row away from its ODE image.
    per_row = np.abs(np.asarray(sde.x0) - np.asarray(ode.x0)) / S
    assert per_row.mean() > 0.5, per_row.mean()
    assert np.mean(per_row.max(axis=1) < 1e-3) < 1e-3


@pytest.mark.parametrize("k", [10, 50, 90])
def test_sde_latents_follow_the_forward_marginals(gaussian_runs, k):
    """latents[k] ~ N((1 - t) MU, (1 - t)^2 S^2 + t^2): the SDE keeps the ODE's marginals."""
    ts, _, _, sde = gaussian_runs
    t = float(ts[k])
    sd = np.sqrt((1 - t) ** 2 * S ** 2 + t ** 2)
    lat = np.asarray(sde.latents[k], np.float64)
    assert np.all(np.abs(lat.mean(0) - (1 - t) * MU) / sd < MEAN_TOL), lat.mean(0)
    assert np.all(np.abs(lat.std(0) / sd - 1) < STD_TOL), lat.std(0) / sd


# ---------------------------------------------------------------------------------------------
# 3. Log-prob recomputation; the ODE path.

def test_step_logprob_recomputes_the_stored_log_probs(gaussian_runs):
    ts, _, _, sde = gaussian_runs
    lat = sde.latents[:, :2000]
    rows = lat.shape[1]

    def one(x, x_next, t, t_next):
        v = gaussian_velocity(x, jnp.full((rows,), t, jnp.float32))
        return flow.step_logprob(x, x_next, v, t, t_next, noise_level=NOISE, t_cap=ts[1])

    recomputed = np.asarray(jax.vmap(one)(lat[:-1], lat[1:], ts[:-1], ts[1:]))
    stored = np.asarray(sde.log_probs[:, :2000])
    assert stored.shape == (N_STEPS, rows) and np.all(stored != 0)
    # Same arithmetic, but XLA may fuse v and the mean differently inside and outside the scan;
    # a 1-ulp change of the mean moves log N by ~|z| ulp(x) / std, so the bound scales with
    # 1 / std (std = 0.007 at the last step). Where std >= 0.1 it is 1e-6.
    std_k = np.asarray(flow.sde_sigma(ts[:-1], ts[1], NOISE) * jnp.sqrt(ts[:-1] - ts[1:]))
    diff = np.abs(recomputed - stored).max(axis=1)
    assert np.all(diff <= 1e-6 * (1 + 1 / std_k)), diff
    assert np.all(diff[std_k >= 0.1] <= 1e-6), diff[std_k >= 0.1]
    # And the stored values are the exact Gaussian density of the drawn step (float64 check).
    k = 50
    x, x_next = np.asarray(lat[k], np.float64), np.asarray(lat[k + 1], np.float64)
    v = np.asarray(gaussian_velocity(lat[k], jnp.full((rows,), ts[k])), np.float64)
    mean, std = np_mean_std(x, v, float(ts[k]), float(ts[k + 1]), NOISE, float(ts[1]))
    np.testing.assert_allclose(stored[k], np_logprob(x_next, mean, std), rtol=1e-5, atol=1e-5)


def test_ode_path_has_zero_log_probs_and_brackets_the_latents(gaussian_runs):
    ts, x1, ode, sde = gaussian_runs
    for out in (ode, sde):
        assert out.latents.shape == (N_STEPS + 1, N_ROWS, 4)
        assert out.log_probs.shape == (N_STEPS, N_ROWS)
        assert out.latents.dtype == out.log_probs.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(out.latents[0]), np.asarray(x1))
        np.testing.assert_array_equal(np.asarray(out.latents[-1]), np.asarray(out.x0))
    assert np.all(np.asarray(ode.log_probs) == 0.0)
    # rng=None or noise_level=0 both mean the ODE.
    small = x1[:64]
    ref = flow.sample(gaussian_velocity, small, ts)
    for out in (flow.sample(gaussian_velocity, small, ts, noise_level=NOISE),
                flow.sample(gaussian_velocity, small, ts, rng=jax.random.key(3))):
        np.testing.assert_array_equal(np.asarray(out.latents), np.asarray(ref.latents))
        assert np.all(np.asarray(out.log_probs) == 0.0)


# ---------------------------------------------------------------------------------------------
# 4. Determinism and the stochastic-step mask.

def _small_case(steps=8):
    x1 = jax.random.normal(jax.random.key(7), (16, 4), jnp.float32)
    return flow.timesteps(steps, shift=2.0), x1


@jax.jit
def _sde(x1, ts, rng, sde_steps):
    """One compilation for all the small SDE runs (every eager call compiles its scan)."""
    return flow.sample(gaussian_velocity, x1, ts, rng=rng, noise_level=NOISE, sde_steps=sde_steps)


ALL8 = np.ones(8, bool)


def test_same_rng_same_sample_different_rng_different_sample():
    ts, x1 = _small_case()
    a = _sde(x1, ts, jax.random.key(5), ALL8)
    b = _sde(x1, ts, jax.random.key(5), ALL8)
    c = _sde(x1, ts, jax.random.key(6), ALL8)
    for field in flow.FlowSample._fields:
        np.testing.assert_array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)))
    assert np.all(np.asarray(a.latents[1:]) != np.asarray(c.latents[1:]))
    assert np.all(np.asarray(a.log_probs) != np.asarray(c.log_probs))
    # The eager path (sde_steps=None) draws the same sample.
    eager = flow.sample(gaussian_velocity, x1, ts, rng=jax.random.key(5), noise_level=NOISE)
    np.testing.assert_allclose(np.asarray(eager.latents), np.asarray(a.latents), rtol=0,
                               atol=1e-5)


def test_sde_steps_mask_makes_the_other_steps_ode_steps():
    ts, x1 = _small_case()
    mask = np.array([False, False, True, True, True, False, False, False])
    runs = [_sde(x1, ts, jax.random.key(s), mask) for s in (5, 6)]
    for out in runs:
        lp = np.asarray(out.log_probs)
        assert np.all(lp[~mask] == 0.0) and np.all(lp[mask] != 0.0)
        # Masked steps are Euler steps of the ODE.
        for k in np.flatnonzero(~mask):
            x = out.latents[k]
            v = gaussian_velocity(x, jnp.full((x.shape[0],), ts[k]))
            np.testing.assert_allclose(np.asarray(out.latents[k + 1]),
                                       np.asarray(x + v * (ts[k + 1] - ts[k])), rtol=0,
                                       atol=1e-6)
    a, b = runs
    # Before the first stochastic step both rngs give the ODE path; afterwards they differ.
    ode = flow.sample(gaussian_velocity, x1, ts)
    for out in runs:
        np.testing.assert_allclose(np.asarray(out.latents[:3]), np.asarray(ode.latents[:3]),
                                   rtol=0, atol=1e-6)
    assert np.all(np.asarray(a.latents[3:]) != np.asarray(b.latents[3:]))
    # Step k's noise is fold_in(rng, k) whatever the mask: step 0 is stochastic in both runs,
    # from the same x1, so it draws the same x_1.
    full = _sde(x1, ts, jax.random.key(5), ALL8)
    only_first = _sde(x1, ts, jax.random.key(5), np.arange(8) == 0)
    np.testing.assert_array_equal(np.asarray(only_first.latents[1]), np.asarray(full.latents[1]))
    np.testing.assert_array_equal(np.asarray(only_first.log_probs[0]),
                                  np.asarray(full.log_probs[0]))
    # An all-False mask is the ODE; a tuple mask works eagerly.
    none = flow.sample(gaussian_velocity, x1, ts, rng=jax.random.key(5), noise_level=NOISE,
                       sde_steps=(False,) * 8)
    np.testing.assert_allclose(np.asarray(none.latents), np.asarray(ode.latents), rtol=0,
                               atol=1e-6)
    assert np.all(np.asarray(none.log_probs) == 0.0)


# ---------------------------------------------------------------------------------------------
# 5. The grid; argument errors.

@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_timesteps_follow_the_shift_formula(shift):
    ts = flow.timesteps(5, shift)
    assert ts.shape == (6,) and ts.dtype == jnp.float32
    u = np.array([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    np.testing.assert_allclose(np.asarray(ts), shift * u / (1 + (shift - 1) * u), rtol=1e-6)
    assert float(ts[0]) == 1.0 and float(ts[-1]) == 0.0
    if shift == 3.0:  # more of the grid at high noise: t' = 3 * 0.8 / 2.6 at the second point
        assert abs(float(ts[1]) - 12 / 13) < 1e-6
    assert flow.timesteps(1).tolist() == [1.0, 0.0]


def test_bad_arguments_raise_user_errors():
    ts, x1 = _small_case(4)
    with pytest.raises(UserError, match="num_steps must be >= 1"):
        flow.timesteps(0)
    with pytest.raises(UserError, match="num_steps must be an integer"):
        flow.timesteps(2.5)
    with pytest.raises(UserError, match="shift must be a finite number > 0"):
        flow.timesteps(4, shift=0.0)
    with pytest.raises(UserError, match="noise_level must be a finite scalar >= 0"):
        flow.sample(gaussian_velocity, x1, ts, rng=jax.random.key(0), noise_level=-0.1)
    with pytest.raises(UserError, match="must decrease strictly from 1.0 to 0.0"):
        flow.sample(gaussian_velocity, x1, jnp.array([1.0, 0.5, 0.7, 0.0]))
    with pytest.raises(UserError, match="must decrease strictly from 1.0 to 0.0"):
        flow.sample(gaussian_velocity, x1, jnp.array([0.9, 0.5, 0.0]))
    with pytest.raises(UserError, match="must decrease strictly from 1.0 to 0.0"):
        flow.sample(gaussian_velocity, x1, jnp.array([1.0, 0.5, 0.1]))
    with pytest.raises(UserError, match="at least 2 points"):
        flow.sample(gaussian_velocity, x1, jnp.array([1.0]))
    with pytest.raises(UserError, match=r"one flag per step, shape \(4,\), got shape \(3,\)"):
        flow.sample(gaussian_velocity, x1, ts, rng=jax.random.key(0), noise_level=NOISE,
                    sde_steps=(True, True, False))
    with pytest.raises(UserError, match="noise_level must be a finite scalar > 0"):
        flow.step_logprob(x1, x1, x1, ts[1], ts[2], noise_level=0.0, t_cap=ts[1])


# ---------------------------------------------------------------------------------------------
# 6. jit.

def test_jit_compiles_once_and_matches_eager():
    ts, x1 = _small_case()
    traces = []

    def run(x1, ts, rng):  # ts traced too: its value checks are skipped, its shape is not
        traces.append(1)
        return flow.sample(gaussian_velocity, x1, ts, rng=rng, noise_level=NOISE,
                           sde_steps=jnp.arange(8) < 6)

    jitted = jax.jit(run)
    first = jitted(x1, ts, jax.random.key(1))
    second = jitted(x1 + 1.0, ts, jax.random.key(2))
    assert len(traces) == 1
    assert not np.array_equal(np.asarray(first.x0), np.asarray(second.x0))
    eager = flow.sample(gaussian_velocity, x1, ts, rng=jax.random.key(1), noise_level=NOISE,
                        sde_steps=np.arange(8) < 6)
    np.testing.assert_allclose(np.asarray(first.latents), np.asarray(eager.latents), rtol=0,
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(first.log_probs), np.asarray(eager.log_probs),
                               rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(first.log_probs)[6:] == 0.0)
