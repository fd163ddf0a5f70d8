"""Run one training function in a child process that splits the CPU into several JAX devices.

XLA's CPU backend runs a convolution on one core, so a convolution-heavy step (the VQ
tokenizer's) keeps a 2-core machine half idle on one device. Split into N "devices"
(`--xla_force_host_platform_device_count=N`) with the batch sharded over them, it uses every
core (2-core CPU: a 3x3 conv's gradient 216.6 -> 117.4 ms on two devices, 2026-11-25; the demo's
VQ stage 608 -> 481 s, 2026-12-01, docs/experiments.md). JAX fixes the device
count when its backend starts, so a process that runs other stages on one device (the demo)
hands such a stage to a child process started with the flag.

    result = run_with_cpu_devices("jaxgen.train.vq:train", config, workdir, devices=2)

The child inherits stdout / stderr (its progress bar shows as usual) and dies with its parent
(Linux: a SIGTERM on the parent's exit, which the trainers turn into a checkpoint and a clean
exit), so an interrupted run resumes like any other.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import pathlib
import pickle
import signal
import subprocess
import sys

from jaxgen.errors import UserError

_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def xla_flags_with_devices(devices: int, flags: str | None = None) -> str:
    """XLA_FLAGS `flags` (default: this process's) with the CPU device count set to `devices`,
    other flags kept."""
    flags = os.environ.get("XLA_FLAGS", "") if flags is None else flags
    kept = [f for f in flags.split() if not f.startswith(_DEVICE_FLAG)]
    return " ".join(kept + [f"{_DEVICE_FLAG}={devices}"])


def cpu_split_applies(devices: int) -> bool:
    """True when a child with `devices` CPU devices would help: this process runs JAX on one
    CPU device of a single-process job, and the machine has at least `devices` cores."""
    if devices <= 1 or (os.cpu_count() or 1) < devices:
        return False
    import jax

    return (jax.default_backend() == "cpu" and jax.device_count() == 1
            and jax.process_count() == 1)


def run_with_cpu_devices(target: str, config, workdir, devices: int,
                         in_process_hint: str = "set the device count to 1") -> dict:
    """Call `target(config, str(workdir))` ("module:function") in a child process with
    `devices` CPU devices and return its result dict (plus 'cpu_devices': what the child saw).
    `in_process_hint` tells the user, in the error of a failed child, how to run in-process."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "child_config.pkl"
    result_path = workdir / "child_result.json"
    config_path.write_bytes(pickle.dumps(config))
    result_path.unlink(missing_ok=True)
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags_with_devices(devices)
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "jaxgen.cpu_devices", str(os.getpid()), target,
           str(config_path), str(workdir), str(result_path)]
    child = subprocess.Popen(cmd, env=env)
    try:
        code = child.wait()
    except BaseException:  # Ctrl-C here: let the child checkpoint, then go (a killed parent
        # reaches the child through _die_with_parent)
        child.send_signal(signal.SIGTERM)
        child.wait()
        raise
    if code != 0 or not result_path.exists():
        raise UserError(f"{target} failed in its {devices}-device child process (exit code "
                        f"{code}; its messages are above); rerun the same command to resume "
                        f"from {workdir}, or {in_process_hint} to run it in this process")
    return json.loads(result_path.read_text())


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux for a SIGTERM when the parent dies (no-op elsewhere); exit if it already has.
    (Done here, not in a Popen preexec_fn, which is unsafe in a multithreaded parent.)"""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent_pid:
        sys.exit(1)


def _child_main(parent_pid: str, target: str, config_path: str, workdir: str,
                result_path: str) -> int:
    _die_with_parent(int(parent_pid))
    import jax

    module_name, name = target.split(":")
    fn = getattr(importlib.import_module(module_name), name)
    config = pickle.loads(pathlib.Path(config_path).read_bytes())
    try:
        result = dict(fn(config, workdir))
    except UserError as e:
        print(f"jaxgen: error: {e}", file=sys.stderr)
        return 2
    result["cpu_devices"] = jax.device_count()
    tmp = pathlib.Path(result_path + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.rename(result_path)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(*sys.argv[1:]))
