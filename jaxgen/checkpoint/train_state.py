"""Training-state checkpoints: Orbax CheckpointManager with async saves, keep-N, atomic steps.

A checkpoint step directory holds three items:
  state  the TrainState (params, optimizer state, step, rng) as sharded arrays
  data   the data iterator's state (JSON; Grain's bytes state is stored as text)
  meta   the job config and anything else JSON-able (for humans and sanity checks)

Atomicity comes from Orbax: a step is written into a temporary directory and renamed only when
complete, so a crash mid-save leaves the previous step intact; leftovers are cleaned at start.
`restore_latest` walks back from the newest step: a step that fails to read (corrupted files)
is moved aside to `<dir>/../checkpoints_corrupt/` with a warning, and the previous one is used.
"""

from __future__ import annotations

import base64
import logging
import pathlib
import shutil
import warnings


import jax
import orbax.checkpoint as ocp

from jaxgen.errors import CheckpointError

log = logging.getLogger(__name__)

_BYTES_TAG = "__bytes_b64__"


def _encode_data_state(data_state):
    if isinstance(data_state, (bytes, bytearray)):
        return {_BYTES_TAG: base64.b64encode(bytes(data_state)).decode("ascii")}
    return {"value": data_state}


def _decode_data_state(obj):
    if obj is None:
        return None
    if _BYTES_TAG in obj:
        return base64.b64decode(obj[_BYTES_TAG])
    return obj.get("value")


class CheckpointManager:
    """Save / restore TrainStates under `directory` (one subdirectory per step).

    Args:
      directory: where steps live (created).
      max_to_keep: keep the newest N steps (older ones are deleted after a newer one lands).
      keep_period: also keep every step that is a multiple of this (0: none), e.g. to evaluate
        a run's trajectory afterwards.
      save_interval_steps: `maybe_save` saves when step % interval == 0.
      async_save: write in a background thread; the arrays are copied off the device before
        `save` returns, so the caller may donate/overwrite the state immediately.
    """

    def __init__(self, directory, max_to_keep: int = 3, save_interval_steps: int = 1,
                 async_save: bool = True, keep_period: int = 0):
        self.directory = pathlib.Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.save_interval_steps = max(int(save_interval_steps), 1)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, keep_period=int(keep_period) or None, save_interval_steps=1,
            create=True, cleanup_tmp_directories=True, enable_async_checkpointing=async_save)
        self._options = options
        self.max_to_keep = max_to_keep
        self.keep_period = int(keep_period)
        self._mngr = ocp.CheckpointManager(self.directory, options=options)

    # ---------------------------------------------------------------------------- queries

    def all_steps(self) -> list[int]:
        self._mngr.reload()
        return sorted(self._mngr.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    # ------------------------------------------------------------------------------- save

    def save(self, step: int, state, data_state=None, meta: dict | None = None,
             wait: bool = False) -> bool:
        """Save `state` at `step` (skipped if that step already exists). Returns True if saved."""
        step = int(step)
        if step in self.all_steps():
            return False
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(_encode_data_state(data_state)),
            meta=ocp.args.JsonSave(meta or {}),
        )
        saved = self._mngr.save(step, args=args, force=True)
        if wait:
            self.wait()
        return bool(saved)

    def maybe_save(self, step: int, state, data_state=None, meta=None) -> bool:
        if int(step) % self.save_interval_steps:
            return False
        return self.save(step, state, data_state, meta)

    def wait(self):
        """Block until pending asynchronous saves are on disk, then apply keep-N (Orbax only
        prunes at the next save, so a finished run would otherwise keep one extra step)."""
        self._mngr.wait_until_finished()
        steps = self.all_steps()
        if self.max_to_keep and len(steps) > self.max_to_keep:
            for step in steps[:len(steps) - self.max_to_keep]:
                if not (self.keep_period and step % self.keep_period == 0):
                    self._mngr.delete(step)

    # ---------------------------------------------------------------------------- restore

    def restore(self, step: int, abstract_state):
        """(state, data_state, meta) at `step`; `abstract_state` holds ShapeDtypeStructs with
        shardings so arrays are restored directly sharded."""
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        )
        out = self._mngr.restore(int(step), args=args)
        return out["state"], _decode_data_state(out["data"]), dict(out["meta"] or {})

    def restore_latest(self, abstract_state):
        """Restore the newest readable step: (step, state, data_state, meta) or None if none.

        Corrupted steps are moved aside with a warning and the previous step is tried.
        """
        for step in reversed(self.all_steps()):
            try:
                state, data_state, meta = self.restore(step, abstract_state)
            except Exception as e:  # noqa: BLE001 - any read failure means an unusable step
                quarantine = self._quarantine(step)
                warnings.warn(
                    f"checkpoint step {step} in {self.directory} could not be read "
                    f"({type(e).__name__}: {str(e)[:200]}); moved it to {quarantine} and "
                    "falling back to the previous checkpoint", RuntimeWarning, stacklevel=2)
                continue
            return step, state, data_state, meta
        return None

    def _quarantine(self, step: int) -> pathlib.Path:
        src = self.directory / str(step)
        dst_dir = self.directory.parent / f"{self.directory.name}_corrupt"
        dst = dst_dir / str(step)
        if jax.process_index() == 0 and src.exists():
            dst_dir.mkdir(parents=True, exist_ok=True)
            if dst.exists():
                shutil.rmtree(dst)
            shutil.move(str(src), str(dst))
        # Orbax caches the step list: rebuild the manager so the moved step is forgotten.
        self._mngr.close()
        self._mngr = ocp.CheckpointManager(self.directory, options=self._options)
        return dst

    def close(self):
        self.wait()
        self._mngr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def require_checkpoint(directory) -> CheckpointManager:
    """A manager for an existing checkpoint directory; CheckpointError if it has no steps."""
    path = pathlib.Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist; pass the workdir "
                              "of a training run (it contains checkpoints/)")
    mngr = CheckpointManager(path)
    if mngr.latest_step() is None:
        raise CheckpointError(f"no checkpoint steps found in {path}; train first or pass the "
                              "right --workdir")
    return mngr


