"""Multi-host training: two local processes (4 CPU devices each, `jax.distributed` over a local
coordinator, Gloo collectives) run `jaxgen train sft` as two TPU hosts would, and give the run a
single process with 8 devices gives; a run started on 2 hosts resumes on 1 and continues
exactly. This is the path launch/ scripts take (JAXGEN_DISTRIBUTED=1). GRPO and Flow-GRPO on
two hosts: test_grpo_mesh.py and test_flow_mesh.py beside it."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy

from jaxgen.config import load_config
from jaxgen.cpu_devices import xla_flags_with_devices
from jaxgen.models import janus
from jaxgen.train import vq as vq_lib
from tests.helpers import REPO_ROOT
from tests.helpers.rl_hosts import free_port

TIMEOUT = 600


def _env(devices: int, **extra) -> dict:
    env = dict(os.environ, XLA_FLAGS=xla_flags_with_devices(devices), JAX_PLATFORMS="cpu",
               **extra)
    env.pop("JAXGEN_DISTRIBUTED", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The tiny ShapesWorld data and a random tiny VQ tokenizer."""
    d = tmp_path_factory.mktemp("mh_inputs")
    subprocess.run([sys.executable, "-m", "jaxgen.cli", "data", "build", "--config",
                    "configs/data.py:tiny", "--out", str(d / "data")], cwd=REPO_ROOT, check=True,
                   capture_output=True, timeout=TIMEOUT)
    mc = janus.config_from_configdict(load_config("janus:tiny").model)
    vq = vq_lib.export_params(janus.init_params(mc, jax.random.PRNGKey(0))["vqmodel"],
                              d / "vq.safetensors")
    return d / "data", vq


def _sft_cmd(workdir, inputs, steps):
    data, vq = inputs
    return [sys.executable, "-m", "jaxgen.cli", "train", "sft", "--config",
            "configs/sft.py:tiny", "--workdir", str(workdir), "--config.batch_size=8",
            # the lr schedule spans 6 steps whatever total_steps is, so a 4-step run is the
            # first 4 steps of a 6-step one
            f"--config.total_steps={steps}", "--config.optim.decay_steps=6",
            f"--config.data.data_dir={data}",
            f"--config.data.vq_params={vq}"]


def _losses(workdir):
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _params(workdir):
    return safetensors.numpy.load_file(str(workdir / "final" / "params.safetensors"))


def test_two_hosts_train_like_one_and_resume_on_one(inputs, tmp_path):
    one, two = tmp_path / "one_host", tmp_path / "two_hosts"
    single = subprocess.run(_sft_cmd(one, inputs, 6), cwd=REPO_ROOT, env=_env(8),
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert single.returncode == 0, single.stderr[-3000:]

    port = free_port()
    procs = [subprocess.Popen(_sft_cmd(two, inputs, 4), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(
                                  4, JAXGEN_DISTRIBUTED="1",
                                  JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                  JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
             for i in range(2)]
    outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    # every host drew the same global batches, so the 2-host steps are the 1-host steps
    l1, l2 = _losses(one), _losses(two)
    assert sorted(l2) == [1, 2, 3, 4]
    np.testing.assert_allclose([l2[s] for s in range(1, 5)], [l1[s] for s in range(1, 5)],
                               rtol=1e-6)
    four = _params(two)  # gathered from both hosts' shards, written once by process 0
    assert set(four) == set(_params(one))

    # the 2-host run's last checkpoint (step 4) resumes on one host with 8 devices
    resumed = subprocess.run(_sft_cmd(two, inputs, 6), cwd=REPO_ROOT, env=_env(8),
                             capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    l2 = _losses(two)
    np.testing.assert_allclose([l2[5], l2[6]], [l1[5], l1[6]], rtol=1e-6)
    a, b = _params(two), _params(one)
    moved = max(float(np.abs(four[k] - b[k]).max()) for k in b)
    assert moved > 1e-4  # steps 5-6 changed the params ...
    for k in b:  # ... exactly as in the uninterrupted 1-host run (Adam, float32 reductions)
        np.testing.assert_allclose(a[k], b[k], atol=2e-6, err_msg=k)
