"""The 'vq_consistency' reward: share of image codes that survive decode -> uint8 -> encode."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.errors import UserError
from jaxgen.models import janus
from jaxgen.rewards import RewardBatch, RewardContext, make_reward


def _host_round_trip_fraction(params, config, codes):
    """The reference: decode, save as a uint8 image on the host, encode the saved image."""
    pixels = np.asarray(janus.vq_decode(params, config, jnp.asarray(codes)))
    saved = np.clip(np.round((np.clip(pixels, -1, 1) + 1) * 127.5), 0, 255).astype(np.uint8)
    again = np.asarray(janus.vq_encode(params, config, jnp.asarray(saved, jnp.float32) / 127.5 - 1))
    return (again == codes).mean(-1)


def test_reward_is_the_share_of_codes_surviving_a_saved_image_round_trip(tiny_janus):
    config, params = tiny_janus
    n, k = config.num_image_tokens, config.vq.num_embeddings
    rng = np.random.default_rng(0)
    random_codes = rng.integers(0, k, (6, n)).astype(np.int32)
    # codes of images the tokenizer itself drew are closer to fixed points than random codes
    drawn = np.asarray(janus.vq_encode(params, config, janus.vq_decode(
        params, config, jnp.asarray(random_codes))))
    codes = np.concatenate([random_codes, drawn])
    context = RewardContext(policy_config=config, policy_params_fn=lambda: params)
    reward = make_reward("vq_consistency", context)
    got = np.asarray(reward(RewardBatch(prompts=[""] * len(codes), reasoning=[""] * len(codes),
                                        metadata=[{}] * len(codes), image_tokens=codes)))
    want = _host_round_trip_fraction(params, config, codes)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert got.shape == (12,) and np.all((got >= 0) & (got <= 1))
    assert got[6:].mean() > got[:6].mean()


def test_reward_needs_the_policy_tokenizer_and_image_tokens(tiny_janus):
    config, params = tiny_janus
    with pytest.raises(UserError, match="policy's VQ tokenizer"):
        make_reward("vq_consistency", RewardContext())
    reward = make_reward("vq_consistency",
                         RewardContext(policy_config=config, policy_params_fn=lambda: params))
    with pytest.raises(UserError, match="image tokens"):
        reward(RewardBatch(prompts=["a"], reasoning=[""], metadata=[{}]))
