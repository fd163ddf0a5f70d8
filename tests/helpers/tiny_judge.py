"""References for the judge tests on the tiny random model: one unpadded understanding row's
logits written out, and random VQ codes with the images the host would save for them."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.models import janus
from jaxgen.rewards import RewardContext


@functools.partial(jax.jit, static_argnums=1)
def row_logits(params, config, ids, pixels):
    """Text logits [L, V] of one unpadded understanding row (image resized for SigLIP)."""
    emb = janus.embed_text(params, config, ids)
    size = config.vision.image_size
    pix = jax.image.resize(pixels[None], (1, size, size, 3), "bilinear")
    emb = janus.merge_image_embeds(emb, ids, janus.embed_understanding_images(params, config, pix),
                                   config.image_token_id)
    pos = jnp.arange(ids.shape[1])[None]
    hidden, _ = janus.decode(params, config, emb, pos, jnp.ones(ids.shape, bool))
    return janus.text_logits(params, config, hidden)[0]


def codes_and_host_images(params, config, seed):
    """Two random VQ code grids and their decoded images as the host would save them (uint8)."""
    codes = jax.random.randint(jax.random.PRNGKey(seed), (2, config.num_image_tokens), 0,
                               config.vq.num_embeddings)
    pixels = np.asarray(janus.vq_decode(params, config, codes))
    return codes, np.round((np.clip(pixels, -1, 1) + 1) * 127.5).astype(np.uint8)


def decoding_context(tiny, seed):
    """(RewardContext, codes, host images): the `tiny` judge (registered as 'tiny') with the
    policy's VQ decoder, so that its rewards read image codes, and codes_and_host_images(seed)."""
    config, params, _, judge = tiny
    codes, host = codes_and_host_images(params, config, seed)
    ctx = RewardContext(judges={"tiny": judge}, policy_config=config,
                        policy_params_fn=lambda: params)
    return ctx, codes, host
