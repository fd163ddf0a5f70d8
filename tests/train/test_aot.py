"""`jaxgen aot sft`: the SFT step compiled from shapes for a target mesh, and its memory report."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxgen.config import load_config
from jaxgen.errors import UserError
from jaxgen.models import janus
from jaxgen.train import aot, sft, sft_data
from tests.helpers import REPO_ROOT
from tests.helpers.tiny_tokenizer import make_tokenizer


@pytest.fixture(scope="module")
def eight_device_plan():
    """`jaxgen aot sft` on 8 CPU devices (a fresh process: the device count is set at start)."""
    cmd = [sys.executable, "-m", "jaxgen.cli", "aot", "sft", "--config", "configs/sft.py:tiny",
           "--devices", "8", "--config.batch_size=8", "--device-memory-gib", "1", "--json"]
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_eight_devices_hold_their_shards_and_the_compiled_step_agrees(eight_device_plan):
    plan = eight_device_plan
    b = plan["bytes"]
    assert plan["devices"] == 8 and np.prod(list(plan["mesh"].values())) == 8
    assert plan["mesh"]["fsdp"] == 8 and plan["batch_shape"] == [8, 128] and plan["fits"]
    # fsdp shards the weights: one device holds about an eighth (small leaves stay whole)
    assert b["params_global"] / 8 <= b["params"] < b["params_global"] / 4
    # the compiled step's arguments are the state as sharded here, plus the batch shards it
    # reads (jit drops inputs the loss never touches); the donated state is reused as output
    state = b["params"] + b["opt_state"] + b["step_and_rng"]
    c = plan["compiled"]
    assert state <= c["arguments"] <= state + b["batch"]
    assert c["aliased"] >= b["params"] + b["opt_state"]
    assert c["peak"] == c["arguments"] + c["outputs"] - c["aliased"] + c["temporaries"]


def test_report_says_whether_the_step_fits(eight_device_plan):
    lines, fits = aot.report_lines(eight_device_plan, device_memory_gib=1.0)
    assert fits and lines[-1].endswith("fits")
    lines, fits = aot.report_lines(eight_device_plan, device_memory_gib=1e-6)
    assert not fits and "does NOT fit" in lines[-1] and "grad_accum_steps" in lines[-1]


def test_micro_batches_and_remat_lower_the_temporaries(eight_device_plan):
    """One CPU device (this process's): the report follows the config's execution options; and
    each of 8 devices computes an eighth of the step (the activations are split over the batch,
    not gathered onto every device)."""
    devices = aot.target_devices("1")

    def plan(*overrides):
        return aot.plan_sft(load_config("sft:tiny", ["--config.batch_size=8", *overrides]),
                            devices)

    plain = plan()
    temporaries = plain["compiled"]["temporaries"]
    assert plan("--config.grad_accum_steps=4")["compiled"]["temporaries"] < temporaries
    assert plan("--config.model_options.remat_policy=full")["compiled"]["temporaries"] < temporaries
    # the same step's XLA FLOPs: about 1/8 per device on 8 devices (collectives add a little)
    ratio = eight_device_plan["flops_per_device"] / plain["flops_per_device"]
    assert 0.1 < ratio < 0.2, ratio


@pytest.mark.parametrize("overrides", [
    [],
    ["--config.data.packing=True", "--config.data.task_mix.understanding=0.5",
     "--config.data.judge_task=yes_no"],
])
def test_abstract_batch_is_the_batch_the_trainer_feeds(overrides):
    """Keys, shapes and dtypes of abstract_sft_batch equal a real MixedBatcher batch."""
    config = load_config("sft:tiny", ["--config.data.num_examples=16", *overrides])
    tok = make_tokenizer()
    mc = sft.model_config_for(config, tok)
    vq_params = janus.init_params(mc, jax.random.PRNGKey(0))["vqmodel"]
    data = sft_data.build_dataset(config, tok, mc, vq_params)
    real = next(sft_data.MixedBatcher(data, int(config.batch_size), config.data.task_mix, 0,
                                      mc.vision.image_size))
    want = {k: (v.shape, np.dtype(v.dtype)) for k, v in real.items()}
    got = {k: (v.shape, np.dtype(v.dtype)) for k, v in aot.abstract_sft_batch(config, mc).items()}
    assert got == want


def test_device_errors():
    with pytest.raises(UserError, match="fresh process"):
        aot.target_devices(str(len(jax.devices("cpu")) + 3))
    with pytest.raises(UserError, match="number of CPU devices"):
        aot.target_devices("many")
    try:
        import libtpu  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="jax\\[tpu\\]"):
            aot.target_devices(topology="v5e:2x2")
