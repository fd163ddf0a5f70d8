"""Exact resume: SIGKILL / SIGTERM mid-run then rerun gives bitwise-equal final params; a
NaN loss stops the run and keeps the last good checkpoint."""

import json
import os
import pathlib
import signal
import subprocess
import time

import numpy as np
import pytest

from tests.helpers import REPO_ROOT, script_command

TOTAL = 24


def _env(tmp_path, sleep=0.0):
    return dict(os.environ, STANDIN_STEP_SLEEP=str(sleep), JAX_PLATFORMS="cpu",
                JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"))


def _run(workdir, env, *extra):
    return subprocess.run(script_command("standin_trainer", workdir, TOTAL, *extra), cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def _logged_step(workdir) -> int:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return max((r["step"] for r in lines), default=0)


def _start_and_signal(workdir, env, sig, at_step):
    proc = subprocess.Popen(script_command("standin_trainer", workdir, TOTAL), cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while _logged_step(workdir) < at_step and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def _params(workdir):
    z = np.load(pathlib.Path(workdir) / "final_params.npz")
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    r = _run(tmp / "run", _env(tmp))
    assert r.returncode == 0, r.stderr[-3000:]
    return _params(tmp / "run"), tmp


def test_sigkill_then_rerun_is_bitwise_equal(reference):
    ref, tmp = reference
    workdir = tmp / "killed"
    rc, _, _ = _start_and_signal(workdir, _env(tmp, sleep=0.15), signal.SIGKILL, at_step=8)
    assert rc == -signal.SIGKILL
    killed_at = _logged_step(workdir)
    assert 8 <= killed_at < TOTAL
    assert not (workdir / "final_params.npz").exists()
    r = _run(workdir, _env(tmp))  # the same command again: resumes from the last checkpoint
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"STATUS done {TOTAL}" in r.stdout
    got = _params(workdir)
    assert got.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])  # bitwise


def test_sigterm_saves_and_exits_cleanly_then_resumes_exactly(reference):
    ref, tmp = reference
    workdir = tmp / "preempted"
    rc, out, err = _start_and_signal(workdir, _env(tmp, sleep=0.15), signal.SIGTERM, at_step=5)
    assert rc == 0, err[-3000:]
    status = [ln for ln in out.splitlines() if ln.startswith("STATUS")][-1].split()
    assert status[1] == "preempted"
    stopped = int(status[2])
    # A checkpoint was written at the exact step the run stopped (not a multiple of ckpt_every).
    assert (workdir / "checkpoints" / str(stopped)).is_dir()
    r = _run(workdir, _env(tmp))
    assert r.returncode == 0, r.stderr[-3000:]
    got = _params(workdir)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(reference):
    _, tmp = reference
    workdir = tmp / "nan"
    r = _run(workdir, _env(tmp), "--nan-at", "8")
    assert r.returncode == 2
    assert "loss became nan at step 8" in r.stderr
    assert "last good checkpoint (step 6)" in r.stderr
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 6
