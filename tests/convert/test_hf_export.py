"""A complete export: a Hugging Face Janus directory with its processor, imported, GRPO-trained,
exported back, loads with JanusProcessor and JanusForConditionalGeneration and draws the same
greedy image as jaxgen; a flow decoder is written beside the export, never dropped."""

import json

import jax
import numpy as np
import transformers

import jaxgen
from jaxgen.checkpoint import FLOW_PARAMS_FILE
from jaxgen.cli import main
from jaxgen.config import load_config
from jaxgen.convert.cli import FLOW_DIR
from jaxgen.train import grpo
from tests.helpers import rl_test_setup as setup
from tests.helpers.hf_reference import hf_greedy_image_tokens


def _grpo_trained(ckpt, workdir):
    config = load_config("grpo:tiny", ["--config.total_steps=1", "--config.checkpoint_every=1",
                                       "--config.mesh.fsdp=1", "--config.optim.name=sgd",
                                       "--config.optim.learning_rate=1.0",
                                       f"--config.policy_checkpoint={ckpt}"])
    config.rewards = {"name": "low_codes"}  # registered by rl_test_setup
    return grpo.train(config, workdir)["policy_checkpoint"]


def test_grpo_trained_export_reloads_with_transformers(hf_tiny_dir, tmp_path):
    ckpt, hf_out = tmp_path / "ckpt", tmp_path / "hf"
    assert main(["convert", "hf-to-jax", "--hf-dir", str(hf_tiny_dir), "--out", str(ckpt)]) == 0
    assert (ckpt / "processor_config.json").exists()
    final = _grpo_trained(ckpt, tmp_path / "grpo")
    before = jax.device_get(jaxgen.load(ckpt).params["generation_head"])
    after = jaxgen.load(final)
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(
        jax.tree.leaves(jax.device_get(after.params["generation_head"])), jax.tree.leaves(before)))
    assert moved > 0  # the export carries trained weights, not the imported ones
    assert main(["convert", "jax-to-hf", "--ckpt", final, "--out", str(hf_out)]) == 0

    processor = transformers.JanusProcessor.from_pretrained(hf_out)
    model = transformers.JanusForConditionalGeneration.from_pretrained(hf_out).eval()
    assert processor.num_image_tokens == after.config.vision.num_image_tokens
    assert json.loads((hf_out / "processor_config.json").read_text()) == json.loads(
        (hf_tiny_dir / "processor_config.json").read_text())
    ids = processor(text=["w10 w11 w12"], generation_mode="image",
                    return_tensors="np")["input_ids"]
    assert ids[0, -1] == after.config.boi_token_id
    want = hf_greedy_image_tokens(model, after.config, ids, 5.0)
    got = after.generate(input_ids=ids, greedy=True, cfg_weight=5.0)
    np.testing.assert_array_equal(np.stack([s.image_tokens for s in got]), want)


def test_export_of_a_model_without_processor_files_writes_one(tmp_path):
    jc, params = setup.tiny_janus()
    gen = jaxgen.api.Generator(params, jc, setup.make_tokenizer())
    out = gen.export_hf(tmp_path / "hf")
    processor = transformers.JanusProcessor.from_pretrained(out)
    assert processor.num_image_tokens == jc.vision.num_image_tokens
    assert processor.image_processor.size["height"] == jc.vision.image_size
    assert processor.tokenizer.boi_token == "<begin_of_image>"


def test_flow_decoder_is_written_beside_the_export(tmp_path, capsys):
    policy = setup.flow_policy(str(tmp_path))
    out = tmp_path / "hf"
    assert main(["convert", "jax-to-hf", "--ckpt", policy, "--out", str(out)]) == 0
    assert (out / FLOW_DIR / FLOW_PARAMS_FILE).read_bytes() == (
        tmp_path / "policy" / FLOW_PARAMS_FILE).read_bytes()
    assert "flow decoder has no transformers equivalent" in capsys.readouterr().out
