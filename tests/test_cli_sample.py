"""`jaxgen convert hf-to-jax`, `jaxgen sample`, `jaxgen convert jax-to-hf`, called in-process."""

import json

import numpy as np
from PIL import Image

from jaxgen.cli import main


def test_convert_sample_export(hf_tiny_dir, tmp_path, capsys):
    ckpt, out, hf_out = tmp_path / "ckpt", tmp_path / "samples", tmp_path / "hf"
    assert main(["convert", "hf-to-jax", "--hf-dir", str(hf_tiny_dir), "--out", str(ckpt)]) == 0
    assert (ckpt / "params.safetensors").exists() and (ckpt / "tokenizer.json").exists()

    prompts = ["w10 w11 w12", "w13"]
    argv = ["sample", "--ckpt", str(ckpt), "--num-samples", "2", "--greedy", "--think",
            "--max-think-tokens", "4", "--seed", "3", "--out", str(out)]
    for p in prompts:
        argv += ["--prompt", p]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == [prompts[0]] * 2 + [prompts[1]] * 2
    images = []
    for r in records:
        assert set(r) >= {"prompt", "reasoning", "image_tokens", "file"}
        assert isinstance(r["reasoning"], str) and len(r["image_tokens"]) == 64
        images.append(np.asarray(Image.open(out / r["file"])))
    side = images[0].shape[0]
    assert images[0].shape == (side, side, 3)
    assert records[0]["image_tokens"] == records[1]["image_tokens"]  # greedy
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (2 * side, 2 * side, 3)
    np.testing.assert_array_equal(grid[side:, :side], images[2])  # row = prompt, column = sample

    assert main(["convert", "jax-to-hf", "--ckpt", str(ckpt), "--out", str(hf_out)]) == 0
    assert (hf_out / "config.json").exists() and (hf_out / "model.safetensors").exists()


def test_sample_reports_a_missing_checkpoint(tmp_path, capsys):
    code = main(["sample", "--ckpt", str(tmp_path / "nope"), "--prompt", "w1", "--out",
                 str(tmp_path / "o")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def _truncate(path, keep: int):
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def test_sample_reports_a_truncated_jaxgen_checkpoint(hf_tiny_dir, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert main(["convert", "hf-to-jax", "--hf-dir", str(hf_tiny_dir), "--out", str(ckpt)]) == 0
    params = ckpt / "params.safetensors"
    for keep in (4, params.stat().st_size // 2):  # inside the header, inside the tensors
        _truncate(params, keep)
        capsys.readouterr()
        argv = ["sample", "--ckpt", str(ckpt), "--prompt", "w1", "--out", str(tmp_path / "o")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{params} is truncated or corrupted" in err and "Traceback" not in err
        assert "re-export it" in err


def test_truncated_hugging_face_shard_names_the_file(hf_tiny_dir, tmp_path):
    import shutil

    import pytest

    from jaxgen import api
    from jaxgen.errors import CheckpointError

    broken = tmp_path / "hf"
    shutil.copytree(hf_tiny_dir, broken)
    weights = broken / "model.safetensors"
    _truncate(weights, weights.stat().st_size - 100)
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated or corrupted"):
        api.load(broken)
