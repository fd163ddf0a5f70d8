"""Deterministic, checkpointable host batch iterators for the trainers.

Both iterators yield dicts of numpy arrays with a leading batch dimension and expose
`get_state()` / `set_state(state)` (small JSON dicts), so a resumed run sees exactly the batches
an uninterrupted run would have seen. Multi-host: each process yields its own rows
(`process_index` / `process_count` slice the global batch).

- `ArrayBatcher`: in-memory arrays (a pre-tokenised SFT set), reshuffled every epoch from
  (seed, epoch).
- `IndexedBatcher`: example i = make_example(i) for i = 0, 1, 2, ... (procedurally rendered
  images for the VQ trainer); the state is the next index.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from jaxgen.errors import UserError


def process_slice(global_batch: int, process_index: int | None, process_count: int | None):
    """This process's rows of a global batch (default: this JAX process of all of them)."""
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if global_batch % pc:
        raise UserError(f"batch_size={global_batch} does not divide over {pc} processes; use a "
                        f"multiple of {pc}")
    per = global_batch // pc
    return slice(pi * per, (pi + 1) * per)


class ArrayBatcher:
    """Shuffled epochs over equal-length arrays; drops the last partial batch of an epoch."""

    def __init__(self, arrays: dict, batch_size: int, seed: int, shuffle: bool = True,
                 process_index: int | None = None, process_count: int | None = None):
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        sizes = {len(v) for v in self.arrays.values()}
        if len(sizes) != 1:
            raise ValueError(f"arrays have different lengths: { {k: len(v) for k, v in self.arrays.items()} }")
        self.n = sizes.pop()
        if self.n < batch_size:
            raise UserError(f"the dataset has {self.n} examples, fewer than batch_size="
                            f"{batch_size}; build more data or lower --config.batch_size")
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rows = process_slice(batch_size, process_index, process_count)
        self.epoch, self.pos = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int):
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.pos + self.batch_size > self.n:
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        idx = self._perm[self.pos:self.pos + self.batch_size][self.rows]
        self.pos += self.batch_size
        return {k: v[idx] for k, v in self.arrays.items()}

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed}

    def set_state(self, state: dict):
        if int(state["seed"]) != self.seed:
            raise UserError(f"the checkpoint's data seed {state['seed']} differs from the "
                            f"config's {self.seed}; use the same config to resume")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._perm = self._permutation(self.epoch)


class IndexedBatcher:
    """Batches of make_example(i) for consecutive global indices i (an endless stream)."""

    def __init__(self, make_example: Callable[[int], dict], batch_size: int,
                 process_index: int | None = None, process_count: int | None = None):
        self.make_example = make_example
        self.batch_size = batch_size
        self.rows = process_slice(batch_size, process_index, process_count)
        self.next_index = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        ids = np.arange(self.next_index, self.next_index + self.batch_size)[self.rows]
        self.next_index += self.batch_size
        examples = [self.make_example(int(i)) for i in ids]
        return {k: np.stack([e[k] for e in examples]) for k in examples[0]}

    def get_state(self) -> dict:
        return {"next_index": self.next_index}

    def set_state(self, state: dict):
        self.next_index = int(state["next_index"])
