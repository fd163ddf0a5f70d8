"""The diffusion path's model: query conditioning through the LLM, the DiT velocity, latents."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.config import load_config
from jaxgen.models import flow, janus
from jaxgen.models.config import ConfigError
from jaxgen.models.janus import config_from_configdict

FC = flow.FlowConfig(num_queries=4, hidden_size=32, num_layers=2, num_heads=4, frequency_dim=16)


@pytest.fixture(scope="module")
def models():
    jc = config_from_configdict(load_config("janus:tiny").model)
    jp = janus.init_params(jc, jax.random.PRNGKey(0))
    fp = flow.init_flow_params(FC, jc, jax.random.PRNGKey(1))
    # zero-initialised output layers make v == 0; give them weights so the tests see a function
    rng = np.random.default_rng(0)
    fp = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray(rng.normal(0, 0.05, x.shape), x.dtype)
        if any(getattr(k, "key", "") in ("adaln", "final_adaln", "patch_out") for k in path) else x,
        fp)
    return jc, jp, fp


def test_fresh_decoder_predicts_zero_velocity():
    """adaLN-zero: every block and the output start at zero, so training starts from v = 0."""
    jc = config_from_configdict(load_config("janus:tiny").model)
    fp = flow.init_flow_params(FC, jc, jax.random.PRNGKey(1))
    x = jax.random.normal(jax.random.PRNGKey(2), (2,) + flow.latent_shape(jc))
    ctx = jax.random.normal(jax.random.PRNGKey(3), (2, FC.num_queries, FC.hidden_size))
    assert float(jnp.abs(flow.velocity(fp, FC, jc, x, jnp.array([0.3, 0.9]), ctx)).max()) == 0.0


def test_query_states_ignore_left_padding(models):
    """The queries read the text wherever its padding puts it (positions restart at the text)."""
    jc, jp, fp = models
    text = [7, 12, 5, 9, 31]
    pad = jc.pad_token_id
    ids = jnp.array([[pad, pad] + text], jnp.int32)
    short = jnp.array([text], jnp.int32)
    ctx_padded = flow.condition(jp, jc, fp, FC, ids, ids != pad)
    ctx_plain = flow.condition(jp, jc, fp, FC, short, jnp.ones_like(short, bool))
    np.testing.assert_allclose(ctx_padded, ctx_plain, atol=2e-5)
    other = flow.condition(jp, jc, fp, FC, jnp.array([[7, 12, 5, 9, 30]]), jnp.ones((1, 5), bool))
    assert float(jnp.abs(other - ctx_plain).max()) > 1e-3  # and the text matters


def test_velocity_reads_time_and_context_and_respects_the_context_mask(models):
    jc, _, fp = models
    x = jax.random.normal(jax.random.PRNGKey(2), (2,) + flow.latent_shape(jc))
    ctx = jax.random.normal(jax.random.PRNGKey(3), (2, FC.num_queries, FC.hidden_size))
    t = jnp.array([0.3, 0.9])
    v = flow.velocity(fp, FC, jc, x, t, ctx)
    assert v.shape == x.shape
    assert float(jnp.abs(flow.velocity(fp, FC, jc, x, t + 0.05, ctx) - v).max()) > 1e-4
    assert float(jnp.abs(flow.velocity(fp, FC, jc, x, t, ctx * 2.0) - v).max()) > 1e-4
    mask = jnp.array([[True, True, False, False]] * 2)
    v_masked = flow.velocity(fp, FC, jc, x, t, ctx, mask)
    ctx_changed = ctx.at[:, 2:].set(100.0)  # hidden entries: no effect
    np.testing.assert_allclose(flow.velocity(fp, FC, jc, x, t, ctx_changed, mask), v_masked,
                               atol=1e-6)
    # rows are independent
    np.testing.assert_allclose(flow.velocity(fp, FC, jc, x[:1], t[:1], ctx[:1]), v[:1], atol=1e-5)


def test_codes_and_latents_round_trip(models):
    jc, jp, _ = models
    codes = jax.random.randint(jax.random.PRNGKey(4), (3, jc.num_image_tokens), 0,
                               jc.vq.num_embeddings)
    x0 = flow.codes_to_latents(jp, jc, codes)
    assert x0.shape == (3,) + flow.latent_shape(jc)
    # unit-length rows scaled by sqrt(embed_dim)
    np.testing.assert_allclose(jnp.linalg.norm(x0, axis=-1), np.sqrt(jc.vq.embed_dim), rtol=1e-5)
    np.testing.assert_array_equal(flow.latents_to_codes(jp, jc, x0), codes)
    noisy = x0 + 0.01 * jax.random.normal(jax.random.PRNGKey(5), x0.shape)
    np.testing.assert_array_equal(flow.latents_to_codes(jp, jc, noisy), codes)
    np.testing.assert_allclose(flow.latents_to_pixels(jp, jc, noisy, snap=True),
                               janus.vq_decode(jp, jc, codes), atol=1e-6)
    np.testing.assert_allclose(flow.latents_to_pixels(jp, jc, x0, snap=False),
                               janus.vq_decode(jp, jc, codes), atol=1e-4)


def test_logical_axes_mirror_the_params(models):
    jc, _, fp = models
    axes = flow.param_logical_axes(FC, jc)
    shapes = jax.tree.map(jnp.shape, fp)
    flat_axes = jax.tree_util.tree_flatten(axes, is_leaf=lambda a: isinstance(a, tuple))[0]
    flat_shapes = jax.tree_util.tree_flatten(shapes, is_leaf=lambda a: isinstance(a, tuple))[0]
    assert len(flat_axes) == len(flat_shapes)
    assert all(len(a) == len(s) for a, s in zip(flat_axes, flat_shapes))
    assert axes["queries"] == (None, "embed")


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown key"):
        flow.FlowConfig.from_dict({"num_querys": 4})
    with pytest.raises(ConfigError, match="must divide by"):
        flow.FlowConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ConfigError, match="num_layers must be >= 1"):
        flow.FlowConfig(num_layers=0)
