"""Run a jitted function over a host array in batches, several calls at a time.

XLA's CPU backend runs a convolution on one core, so the VQ tokenizer's encoder and decoder,
called one batch at a time, leave the other cores idle. Batches issued from a few threads run
side by side (the demo's 64-image encodes: 1.7x faster with two threads on two cores, 2-core
CPU, 2026-12-02; each batch's result is the same as when run alone).

    codes = map_batches(lambda x: np.asarray(encode(x)), images, batch=64)
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Callable

import numpy as np


def default_threads() -> int:
    """One call per core on a CPU backend (at most 8); elsewhere one (an accelerator runs a
    batch on all of itself)."""
    import jax

    return min(os.cpu_count() or 1, 8) if jax.default_backend() == "cpu" else 1


def map_batches(fn: Callable[[np.ndarray], np.ndarray], array: np.ndarray, batch: int,
                threads: int | None = None) -> np.ndarray:
    """np.concatenate([fn(array[i:i + batch]) for i in 0, batch, ...]), the calls made from
    `threads` concurrent threads (default `default_threads()`), results in input order."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    starts = range(0, len(array), batch)
    threads = max(1, min(threads or default_threads(), len(starts)))
    if threads == 1:
        return np.concatenate([fn(array[s:s + batch]) for s in starts])
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return np.concatenate(list(pool.map(lambda s: fn(array[s:s + batch]), starts)))


def split_batches(rows: int, threads: int | None = None) -> int:
    """The batch that splits `rows` rows into one equal piece per concurrent call."""
    threads = max(1, min(threads or default_threads(), rows))
    return -(-rows // threads)
