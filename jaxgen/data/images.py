"""Batches of uint8 images [N, H, W, 3]: resizing to a model's side, and through a VQ tokenizer.

The VQ functions take the jitted encoder (pixels in [-1, 1] -> codes) or encode-decode round
trip, so the same helpers serve the SFT data, the judge's degraded images, the vision tower's
pretraining and the flow decoder's data.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxgen.concurrent_batches import map_batches


def resize_images(images_uint8: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, size, size, 3] (bicubic; the same array when already that size)."""
    if images_uint8.shape[1] == size:
        return images_uint8
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC))
                     for im in images_uint8])


def images_to_codes(vq_encode_fn, images_uint8: np.ndarray, batch: int = 64,
                    threads: int | None = None) -> np.ndarray:
    """uint8 [N, H, W, 3] -> int32 codes [N, n] with a jitted encoder, `threads` batches at a
    time (`jaxgen.concurrent_batches`: one per core on a CPU)."""
    def encode(images):
        return np.asarray(vq_encode_fn(jnp.asarray(images, jnp.float32) / 127.5 - 1.0))

    return map_batches(encode, images_uint8, batch, threads).astype(np.int32)


def vq_roundtrip_images(vq_encode_decode_fn, images_uint8: np.ndarray, batch: int = 64):
    """uint8 images -> the same images encoded and decoded by the VQ tokenizer (uint8), i.e. how
    the policy's generated images look to a judge."""
    def roundtrip(images):
        y = np.asarray(vq_encode_decode_fn(jnp.asarray(images, jnp.float32) / 127.5 - 1.0),
                       np.float32)
        return np.clip(np.round((y + 1.0) * 127.5), 0, 255).astype(np.uint8)

    return map_batches(roundtrip, images_uint8, batch)
