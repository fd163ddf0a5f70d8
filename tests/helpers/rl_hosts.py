"""Start rl_multihost_script as several processes sharing 8 fake CPU devices (two hosts), and
read what the runs and the mesh scripts saved."""
import json
import os
import pathlib
import socket
import subprocess

import numpy as np
import safetensors.numpy

from tests.helpers import REPO_ROOT, script_command

TIMEOUT = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(mode, workdir, steps: int, hosts: int, policy="") -> list:
    """Run `mode` (grpo, flow) to `steps` iterations in `workdir` as `hosts` processes; returns
    the rows of its metrics.jsonl."""
    port = free_port() if hosts > 1 else 0
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAXGEN_DISTRIBUTED", None)
    procs = [subprocess.Popen(script_command("rl_multihost_script", mode, i, hosts, port, workdir,
                                             steps, policy), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
             for i in range(hosts)]
    outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    log = pathlib.Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()]


def params_of(runs, prefix) -> dict:
    """The parameters a mesh script saved for run `prefix` (keys '<prefix>_p:<name>'), by name."""
    return {k[len(prefix) + 3:]: v for k, v in runs.items() if k.startswith(f"{prefix}_p:")}


def exported(workdir, name="params.safetensors") -> dict:
    """The parameters a run exported to <workdir>/final, by checkpoint name."""
    return safetensors.numpy.load_file(str(pathlib.Path(workdir) / "final" / name))


def assert_same_run(rows, stats, keys, params, want_params, loss_atol=1e-7):
    """A run's metrics rows equal `stats` [iterations, len(keys)] (losses to loss_atol, other
    metrics to float32 rounding) and its exported params equal `want_params` to 1e-6."""
    assert [m["step"] for m in rows] == list(range(len(stats)))
    for row, want in zip(rows, stats):
        for key, value in zip(keys, want):
            atol = loss_atol if key.endswith("loss") else 1e-7
            np.testing.assert_allclose(row[key], value, rtol=1e-4, atol=atol, err_msg=key)
    assert set(params) == set(want_params)
    for k, v in want_params.items():
        np.testing.assert_allclose(params[k], v, atol=1e-6, err_msg=k)
