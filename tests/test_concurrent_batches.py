"""jaxgen.concurrent_batches: batches of a host array through a function, several at a time."""

import threading

import numpy as np
import pytest

from jaxgen.concurrent_batches import map_batches, split_batches


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_map_batches_equals_the_sequential_loop_in_input_order(threads):
    x = np.arange(70, dtype=np.float32).reshape(35, 2)  # 35 rows: a short last batch of 3
    seen = set()

    def fn(b):
        seen.add(threading.get_ident())
        return b * 2.0 + b[:, :1]

    out = map_batches(fn, x, batch=8, threads=threads)
    expected = np.concatenate([fn(x[i:i + 8]) for i in range(0, 35, 8)])
    np.testing.assert_array_equal(out, expected)
    assert out.shape == (35, 2)
    assert 1 <= len(seen) <= max(threads, 1) + 1  # the pool's threads (+ the caller, above)


def test_map_batches_rejects_a_zero_batch():
    with pytest.raises(ValueError, match="batch must be >= 1"):
        map_batches(lambda b: b, np.zeros((4, 1)), batch=0)


def test_split_batches_gives_one_piece_per_call():
    assert split_batches(32, threads=2) == 16
    assert split_batches(5, threads=2) == 3  # pieces of 3 and 2
    assert split_batches(1, threads=8) == 1
    assert split_batches(7, threads=1) == 7
