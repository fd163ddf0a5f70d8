"""A GRPO run on 8 fake CPU devices gives the same updates as on one device and compiles its
update step and sampler once across iterations."""

import pathlib
import subprocess
import sys

import numpy as np

SCRIPT = pathlib.Path(__file__).with_name("grpo_mesh_script.py")


def _run(n, out):
    subprocess.run([sys.executable, str(SCRIPT), str(n), str(out)], check=True, timeout=900)
    return np.load(out)


def test_eight_devices_match_one(tmp_path):
    one = _run(1, tmp_path / "one.npz")
    eight = _run(8, tmp_path / "eight.npz")
    assert int(eight["max_devices"]) == 8  # parameters really are spread over the mesh
    np.testing.assert_allclose(eight["stats"], one["stats"], rtol=2e-4, atol=1e-5)
    keys = [k for k in one.files if k.startswith("arr_")]
    for k in keys:
        np.testing.assert_allclose(eight[k], one[k], rtol=2e-4, atol=2e-5, err_msg=k)
    for run in (one, eight):
        # 3 iterations x 2 minibatches: one executable each for update and sampler
        assert int(run["update_compiles"]) == 1
        assert int(run["sampler_compiles"]) == 1
