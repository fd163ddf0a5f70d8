"""Multi-host training: two local processes (4 CPU devices each, `jax.distributed` over a local
coordinator, Gloo collectives) run `jaxgen train sft` as two TPU hosts would, and give the run a
single process with 8 devices gives; a run started on 2 hosts resumes on 1 and continues
exactly. This is the path launch/ scripts take (JAXGEN_DISTRIBUTED=1). GRPO (with and without
the self-reflection loop) and Flow-GRPO likewise."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy

from jaxgen.config import load_config
from jaxgen.models import janus
from jaxgen.train import vq as vq_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", **extra)
    env.pop("JAXGEN_DISTRIBUTED", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The tiny ShapesWorld data and a random tiny VQ tokenizer."""
    d = tmp_path_factory.mktemp("mh_inputs")
    subprocess.run([sys.executable, "-m", "jaxgen.cli", "data", "build", "--config",
                    "configs/data.py:tiny", "--out", str(d / "data")], cwd=ROOT, check=True,
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
    single = subprocess.run(_sft_cmd(one, inputs, 6), cwd=ROOT, env=_env(8),
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert single.returncode == 0, single.stderr[-3000:]

    port = _free_port()
    procs = [subprocess.Popen(_sft_cmd(two, inputs, 4), cwd=ROOT, stdout=subprocess.PIPE,
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
    resumed = subprocess.run(_sft_cmd(two, inputs, 6), cwd=ROOT, env=_env(8),
                             capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    l2 = _losses(two)
    np.testing.assert_allclose([l2[5], l2[6]], [l1[5], l1[6]], rtol=1e-6)
    a, b = _params(two), _params(one)
    moved = max(float(np.abs(four[k] - b[k]).max()) for k in b)
    assert moved > 1e-4  # steps 5-6 changed the params ...
    for k in b:  # ... exactly as in the uninterrupted 1-host run (Adam, float32 reductions)
        np.testing.assert_allclose(a[k], b[k], atol=2e-6, err_msg=k)


RL_SCRIPT = ROOT / "tests" / "train" / "rl_multihost_script.py"


def _rl(mode, workdir, steps, hosts, port=0, policy=""):
    """Run the RL script (`mode`: grpo, flow) as `hosts` processes sharing 8 devices;
    returns the metrics rows."""
    procs = [subprocess.Popen([sys.executable, str(RL_SCRIPT), mode, str(i), str(hosts), str(port),
                               str(workdir), str(steps), str(policy)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env(8 // hosts))
             for i in range(hosts)]
    outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_runs(m1, m2, keys, a, b, loss_atol=1e-7):
    """Equal metrics (losses to loss_atol) and parameters (to 1e-6) of two runs' logs and
    exports."""
    assert [m["step"] for m in m2] == [m["step"] for m in m1]
    for x, y in zip(m1, m2):
        for key in keys:
            atol = loss_atol if key.endswith("loss") else 1e-7
            np.testing.assert_allclose(y[key], x[key], rtol=1e-4, atol=atol, err_msg=key)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=1e-6, err_msg=k)


def test_grpo_on_two_hosts_matches_one_and_resumes_on_one(tmp_path):
    """GRPO with the self-reflection loop (the policy judges each of 2 images per row; every
    host draws the same answers from the gathered judgements), a NumPy reward read on every
    host, KL to the reference, two minibatches and the adaptive entropy state, on 2 processes x
    4 devices, stopped after 1 iteration and resumed on 1 process x 8, ends where an
    uninterrupted 1-host run of 2 iterations does (the loop runs the plain rollout's sampler,
    reward and update code, and more)."""
    one, two = tmp_path / "one_host", tmp_path / "two_hosts"
    m1 = _rl("grpo", one, 2, hosts=1)
    m2 = _rl("grpo", two, 1, hosts=2, port=_free_port())
    assert [m["step"] for m in m2] == [0]  # one host wrote the log
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["1"]
    m2 = _rl("grpo", two, 2, hosts=1)
    # measured: rewards and image counts equal, params within 1.6e-7; the losses are sums of
    # O(0.1-1) terms that nearly cancel (-0.0155 at iteration 1), equal to 2e-6 (float32)
    _assert_same_runs(m1, m2, ("reward_mean", "reflection/num_images", "reflection/self_eval",
                               "kl", "entropy_coef_text", "entropy_coef_image", "loss",
                               "self_eval_loss"), _params(one), _params(two), loss_atol=1e-5)
    assert m1[-1]["entropy_coef_text"] != 0.0  # the adaptive state moved and was carried over
    assert max(m["reflection/num_images"] for m in m1) > 1.0  # some rows regenerated


@pytest.fixture(scope="module")
def flow_policy(tmp_path_factory):
    """A random tiny flow checkpoint whose decoder already predicts something."""
    sys.path.insert(0, str(ROOT / "tests" / "rewards"))
    from tiny_tokenizer import make_tokenizer
    from jaxgen.models import flow
    from jaxgen.train import flow_matching
    jc = janus.config_from_configdict(load_config("janus:tiny").model)
    fc = flow.FlowConfig.from_dict(load_config("flow:tiny").flow)
    fp = flow.init_flow_params(fc, jc, jax.random.PRNGKey(1))
    fp["decoder"]["patch_out"]["kernel"] = 0.05 * jax.random.normal(
        jax.random.PRNGKey(2), fp["decoder"]["patch_out"]["kernel"].shape)
    return flow_matching.save_flow_checkpoint(
        tmp_path_factory.mktemp("flow_policy") / "policy",
        janus.init_params(jc, jax.random.PRNGKey(0)), jc, make_tokenizer(), fp, fc)


def test_flow_grpo_on_two_hosts_matches_one(tmp_path, flow_policy):
    """Flow-GRPO (NumPy rewards of the decoded images and the image tokens, KL on the step means,
    two minibatches) on 2 hosts equals 1 host, and process 0 writes the flow checkpoint."""
    one, two = tmp_path / "one_host", tmp_path / "two_hosts"
    m1 = _rl("flow", one, 2, hosts=1, policy=flow_policy)
    m2 = _rl("flow", two, 2, hosts=2, port=_free_port(), policy=flow_policy)
    flow_params = lambda w: safetensors.numpy.load_file(  # noqa: E731
        str(w / "final" / "flow.safetensors"))
    _assert_same_runs(m1, m2, ("reward_mean", "loss", "kl", "ratio_mean"),
                      flow_params(one), flow_params(two))
    assert _params(two).keys() == _params(one).keys()
