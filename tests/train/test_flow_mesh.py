"""Flow-GRPO on 8 fake CPU devices gives the same updates as on one device (float32 tolerance;
plain SGD so the comparison is of the update itself) and compiles its rollout and update once
across iterations."""

import pathlib
import subprocess
import sys

import numpy as np

SCRIPT = pathlib.Path(__file__).with_name("flow_mesh_script.py")


def test_eight_devices_match_one(tmp_path):
    out = tmp_path / "runs.npz"
    subprocess.run([sys.executable, str(SCRIPT), "8", str(tmp_path), str(out)], check=True,
                   timeout=900)
    r = np.load(out)
    assert int(r["many_max_devices"]) == 8  # the flow params really are spread over the mesh
    assert int(r["one_max_devices"]) == 1
    np.testing.assert_allclose(r["many_stats"], r["one_stats"], rtol=2e-4, atol=1e-5)
    assert np.all(np.abs(r["one_stats"][1, 2]) > 0)  # the KL term is live in iteration 2
    keys = sorted(k[len("one_"):] for k in r.files if k.startswith("one_p"))
    assert keys
    for k in keys:
        np.testing.assert_allclose(r[f"many_{k}"], r[f"one_{k}"], rtol=1e-4, atol=1e-5, err_msg=k)
    for run in ("one", "many"):
        assert int(r[f"{run}_update_compiles"]) == 1
        assert int(r[f"{run}_rollout_compiles"]) == 1
