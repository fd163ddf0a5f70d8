"""Dead-code restarts of the VQ trainer: new codes go where the codebook serves latents worst."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.train.vq import restart_dead_codes


def _latents():
    # 1000 latents the live code 0 already serves exactly (a plain background) and 8 latents
    # (an object edge) that no code serves well
    common = np.tile([[1.0, 0.0]], (1000, 1))
    rare = np.array([[0.0, 1.0]] * 8) + np.random.default_rng(0).normal(0, 1e-3, (8, 2))
    return jnp.asarray(np.concatenate([common, rare]), jnp.float32)


def test_dead_codes_restart_at_badly_served_latents():
    book = jnp.asarray([[1.0, 0.0], [-9.0, -9.0], [-9.0, -8.0], [-8.0, -9.0]], jnp.float32)
    out = np.asarray(restart_dead_codes(book, _latents(), jax.random.PRNGKey(0), noise=0.0,
                                        l2_lookup=False))
    np.testing.assert_array_equal(out[0], [1.0, 0.0])  # live code kept
    # every dead code now sits on a rare latent, although they are < 1% of the latents
    np.testing.assert_allclose(out[1:], np.tile([[0.0, 1.0]], (3, 1)), atol=5e-3)


def test_restart_is_deterministic_and_leaves_a_full_codebook_alone():
    z = _latents()
    book = jnp.asarray([[1.0, 0.0], [0.0, 1.0]], jnp.float32)
    np.testing.assert_array_equal(
        np.asarray(restart_dead_codes(book, z, jax.random.PRNGKey(1), 0.01, True)), book)
    dead = jnp.asarray([[1.0, 0.0], [-1.0, -1.0], [-1.0, -0.9]], jnp.float32)
    a = restart_dead_codes(dead, z, jax.random.PRNGKey(2), 0.01, True)
    b = restart_dead_codes(dead, z, jax.random.PRNGKey(2), 0.01, True)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
