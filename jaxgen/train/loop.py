"""The training loops: `run` for SFT, VQ and flow matching, `run_rl` for GRPO and Flow-GRPO.

    run:    state -> [resume from <workdir>/checkpoints] -> for step: batch -> train_step
            -> metrics -> progress bar / JSONL / TensorBoard -> eval hook -> checkpoint -> ...
    run_rl: runner -> [resume] -> for iteration: runner.iteration(it) (rollout, reference,
            rewards, advantages, update) -> metrics.jsonl / progress bar -> checkpoint -> ...

Guarantees:
- Resume is automatic: the newest readable checkpoint in the workdir (params, optimizer
  state, step, rng, data iterator state) is restored, so re-running the same command after a
  crash continues bit-for-bit (the data iterator and the per-step rng are part of the state).
- SIGTERM (a TPU/cluster preemption notice) makes the loop save a checkpoint at the current
  step and return with status 'preempted' (exit code 0 from the CLI).
- A NaN/Inf loss raises `NonFiniteLossError` naming the step; no checkpoint is written from
  that step on, so the last saved one stays the newest. (RL runs also check the gradient norm
  and the mean reward.)

The data iterator protocol: `next(it)` -> host batch (numpy pytree, batch-leading arrays);
optional `it.get_state()` / `it.set_state(state)` (bytes or JSON-able) for exact resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib
import signal
import threading
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxgen import checkpoint as ckpt_lib
from jaxgen import parallel
from jaxgen.errors import UserError
from jaxgen.train import state as state_lib
from jaxgen.train.metrics import MetricsWriter


class NonFiniteLossError(UserError):
    """The loss became NaN or Inf."""


@dataclasses.dataclass
class LoopConfig:
    total_steps: int
    log_every: int = 10
    ckpt_every: int = 100
    keep_checkpoints: int = 3
    eval_every: int = 0  # 0: only at the end
    async_checkpoints: bool = True
    tokens_per_batch: int = 0  # for throughput; 0 shows steps/s only
    desc: str = "train"
    loss_key: str = "loss"

    @classmethod
    def from_config(cls, config, tokens_per_batch: int = 0, desc: str = "train"):
        t = config.train if "train" in config else config
        return cls(total_steps=int(config.total_steps), log_every=int(t.get("log_every", 10)),
                   ckpt_every=int(t.get("ckpt_every", 100)),
                   keep_checkpoints=int(t.get("keep_checkpoints", 3)),
                   eval_every=int(t.get("eval_every", 0)),
                   async_checkpoints=bool(t.get("async_checkpoints", True)),
                   tokens_per_batch=tokens_per_batch, desc=desc)


class _Preemption:
    """Turns SIGTERM into a flag the loop polls (main thread only)."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):  # noqa: ARG002
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _config_meta(config) -> dict:
    if config is None:
        return {}
    try:
        return {"config": json.loads(config.to_json_best_effort())}
    except Exception:  # noqa: BLE001 - meta is informational
        return {"config": str(config)}


def _check_finite(metrics_host: dict, step: int, key: str, last_saved: int | None, ckpt_dir):
    value = metrics_host.get(key)
    if value is not None and not math.isfinite(float(value)):
        kept = (f"the last good checkpoint (step {last_saved}) is kept in {ckpt_dir}"
                if last_saved is not None else "no checkpoint was written yet")
        raise NonFiniteLossError(
            f"{key} became {float(value)} at step {step}; {kept}. Lower the learning rate "
            "(--config.optim.learning_rate), enable gradient clipping "
            "(--config.optim.grad_clip_norm) or use float32 compute, then rerun to resume.")


def restore_or_init(workdir, state, shardings, keep: int = 3, async_save: bool = True):
    """(manager, state, data_state, start_step): resume from <workdir>/checkpoints if any."""
    mngr = ckpt_lib.CheckpointManager(pathlib.Path(workdir) / "checkpoints", max_to_keep=keep,
                                      async_save=async_save)
    restored = mngr.restore_latest(state_lib.abstract_state(state, shardings))
    if restored is None:
        return mngr, state, None, 0
    step, new_state, data_state, _ = restored
    return mngr, new_state, data_state, int(step)


def run(*, workdir, state, shardings, train_step: Callable, data: Iterator, mesh,
        loop: LoopConfig, config=None,
        eval_fn: Callable[[Any, int], dict] | None = None,
        batch_to_device: Callable | None = None) -> dict:
    """Train until `loop.total_steps`; returns {'state', 'step', 'metrics', 'status', ...}."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mngr, state, data_state, start = restore_or_init(workdir, state, shardings,
                                                     loop.keep_checkpoints,
                                                     loop.async_checkpoints)
    if data_state is not None and hasattr(data, "set_state"):
        data.set_state(data_state)
    to_device = batch_to_device or (lambda b: parallel.shard_batch(b, mesh))
    writer = MetricsWriter(workdir)
    meta = _config_meta(config)
    last_saved = mngr.latest_step()
    ckpt_dir = mngr.directory

    def data_state_now():
        return data.get_state() if hasattr(data, "get_state") else None

    def save(step_):
        nonlocal last_saved
        if mngr.save(step_, state, data_state_now(), meta):
            last_saved = step_

    status = "done"
    host_metrics: dict = {}
    pending = None  # (step, device metrics) of the previous step, checked one step late
    window_start, window_steps = time.perf_counter(), 0
    bar = tqdm(total=loop.total_steps, initial=start, desc=loop.desc, dynamic_ncols=True,
               disable=jax.process_index() != 0)
    step = start
    try:
        with _Preemption() as preempt:
            while step < loop.total_steps:
                if preempt.requested:
                    if pending is not None:
                        _check_finite(jax.device_get(pending[1]), pending[0], loop.loss_key,
                                      last_saved, ckpt_dir)
                    save(step)
                    mngr.wait()
                    status = "preempted"
                    break
                batch = to_device(next(data))
                state, metrics = train_step(state, batch)
                step += 1
                if pending is not None:  # the previous step has finished by now
                    _check_finite(jax.device_get(pending[1]), pending[0], loop.loss_key,
                                  last_saved, ckpt_dir)
                pending = (step, metrics)
                window_steps += 1
                bar.update(1)
                is_log = step % loop.log_every == 0 or step == loop.total_steps
                is_ckpt = step % loop.ckpt_every == 0 or step == loop.total_steps
                is_eval = eval_fn is not None and (
                    (loop.eval_every and step % loop.eval_every == 0) or step == loop.total_steps)
                if is_log or is_ckpt or is_eval:
                    host_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    _check_finite(host_metrics, step, loop.loss_key, last_saved, ckpt_dir)
                    pending = None
                if is_log:
                    dt = time.perf_counter() - window_start
                    host_metrics["steps_per_s"] = window_steps / max(dt, 1e-9)
                    if loop.tokens_per_batch:
                        host_metrics["tokens_per_s"] = host_metrics["steps_per_s"] * \
                            loop.tokens_per_batch
                    window_start, window_steps = time.perf_counter(), 0
                    writer.write(step, host_metrics, prefix="train/")
                    post = {"loss": f"{host_metrics.get(loop.loss_key, float('nan')):.4f}"}
                    if "tokens_per_s" in host_metrics:
                        post["tok/s"] = f"{host_metrics['tokens_per_s']:.0f}"
                    bar.set_postfix(post)
                if is_eval:
                    eval_metrics = eval_fn(state, step) or {}
                    writer.write(step, eval_metrics, prefix="eval/")
                    host_metrics.update({f"eval_{k}": v for k, v in eval_metrics.items()
                                         if np.size(v) == 1})
                if is_ckpt:
                    save(step)
        mngr.wait()
    finally:
        bar.close()
        writer.flush()
        writer.close()
        with contextlib.suppress(Exception):
            mngr.close()
    return {"state": state, "step": step, "metrics": host_metrics, "status": status,
            "checkpoint_dir": str(ckpt_dir), "last_checkpoint_step": last_saved}


# RL metrics that must stay finite: a NaN here means the update broke the policy.
RL_FINITE_KEYS = ("loss", "grad_norm", "reward_mean")


def run_rl(runner, config, workdir, desc: str, postfix: Callable[[dict], dict]) -> dict:
    """The RL loop of GRPO and Flow-GRPO: resume from the newest readable checkpoint, run
    `runner.iteration(it)` to config.total_steps, log metrics.jsonl and a progress bar
    (`postfix(metrics)` -> its fields), checkpoint every config.checkpoint_every iterations.

    SIGTERM saves the state at the current iteration and returns with status 'preempted'; a
    non-finite loss, gradient norm or mean reward raises NonFiniteLossError and writes no
    checkpoint, so the last good one stays the newest.

    runner: iteration(it) -> metrics dict with 'reward_mean'; state(), load_state(state),
    abstract_state() for the sharded device state; optionally host_state() -> JSON-able and
    load_host_state(s) for host-side state (e.g. the adaptive entropy's psi). Returns {'history': metrics dicts of the run so far, 'start': first
    iteration run, 'step': iterations done, 'status': 'done' | 'preempted'}.
    """
    workdir = pathlib.Path(workdir)
    total = int(config.total_steps)
    every = int(config.checkpoint_every)
    mngr = ckpt_lib.CheckpointManager(workdir / "checkpoints",
                                      max_to_keep=int(config.get("keep_checkpoints", 2)),
                                      keep_period=int(config.get("keep_checkpoint_every", 0)),
                                      save_interval_steps=every, async_save=False)
    start = 0
    restored = mngr.restore_latest(runner.abstract_state())
    if restored is not None:
        start, state, host_state, _ = restored
        runner.load_state(state)
        if host_state is not None and hasattr(runner, "load_host_state"):
            runner.load_host_state(host_state)
    host_state_now = getattr(runner, "host_state", lambda: None)
    metrics_path = workdir / "metrics.jsonl"
    history = []
    if metrics_path.exists():  # keep the log of the iterations before the restored step
        history = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
        history = [h for h in history if h["step"] < start]
        parallel.primary_writes(lambda: metrics_path.write_text(
            "".join(json.dumps(h) + "\n" for h in history)), "rl_metrics_trimmed")
    primary = jax.process_index() == 0  # hosts share the work directory: one writes the log
    last_saved = mngr.latest_step()
    status, it = "done", start
    bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True, disable=not primary)
    try:
        with _Preemption() as preempt, \
                (metrics_path.open("a") if primary else contextlib.nullcontext()) as log:
            while it < total:
                if preempt.requested:
                    mngr.save(it, runner.state(), host_state_now(), meta={"step": it}, wait=True)
                    status = "preempted"
                    break
                m = runner.iteration(it)
                m["step"] = it
                for key in RL_FINITE_KEYS:
                    _check_finite(m, it, key, last_saved, mngr.directory)
                it += 1
                history.append(m)
                if primary:
                    log.write(json.dumps(m) + "\n")
                    log.flush()
                bar.update(1)
                bar.set_postfix(**postfix(m))
                if it % every == 0 or it == total:
                    mngr.save(it, runner.state(), host_state_now(), meta={"step": it})
                    last_saved = it
    finally:
        bar.close()
        mngr.close()
    return {"history": history, "start": start, "step": it, "status": status}
