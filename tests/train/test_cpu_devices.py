"""A stage run in a child process with the CPU split into two JAX devices (jaxgen/cpu_devices.py),
as the demo's VQ stage runs on a CPU host: same model as in this process, clear errors."""

import ml_collections
import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxgen import cpu_devices, demo
from jaxgen.config import load_config
from jaxgen.errors import UserError
from jaxgen.train import vq


def _tiny_vq(*overrides):
    # SGD: the update is the gradient itself (Adam's first steps divide tiny gradients, such as
    # the attention key biases' rounding-only ones, by their own size)
    return load_config("vq:tiny", ["--config.total_steps=3", "--config.data.heldout_size=4",
                                   "--config.train.ckpt_every=3", "--config.optim.name=sgd",
                                   "--config.optim.warmup_steps=0", *overrides])


def test_two_device_child_trains_the_same_vq_as_this_process(tmp_path):
    if not cpu_devices.cpu_split_applies(2):
        pytest.skip("needs a single-device CPU process on a machine with >= 2 cores")
    here = vq.train(_tiny_vq(), tmp_path / "here")
    # through the demo's stage function, as `jaxgen demo` calls it
    config = ml_collections.ConfigDict(dict(vq=_tiny_vq(), vq_cpu_devices=2))
    child = demo._vq(config, {"vq": tmp_path / "child"})
    assert child["cpu_devices"] == 2 and child["status"] == "done" and child["step"] == 3
    # the batch sharded over two devices is the same update to float32 rounding
    np.testing.assert_allclose(child["psnr"], here["psnr"], rtol=1e-5)
    a, b = load_file(here["params_path"]), load_file(child["params_path"])
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], atol=1e-5, err_msg=name)


def test_child_failure_is_one_clear_error(tmp_path):
    bad = _tiny_vq("--config.batch_size=3")  # does not divide over two devices
    with pytest.raises(UserError, match=r"2-device child process \(exit code 2"):
        cpu_devices.run_with_cpu_devices("jaxgen.train.vq:train", bad, tmp_path / "vq", 2)
