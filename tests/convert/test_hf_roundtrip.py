"""HF directory -> jaxgen -> HF directory is exact; conversion errors name the problem."""

import json
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from jaxgen.convert import hf
from jaxgen.errors import CheckpointError
from jaxgen.models.config import ConfigError


def _state_dict(model):
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def original_tensors(hf_tiny_dir):
    return load_file(str(hf_tiny_dir / hf.WEIGHTS_FILE))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_export_round_trip_is_exact(hf_tiny_dir, original_tensors, tmp_path, scan_layers):
    params, config, tokenizer = hf.import_hf_dir(hf_tiny_dir, scan_layers=scan_layers)
    if scan_layers:
        assert params["language_model"]["layers"]["mlp"]["up_proj"]["kernel"].shape[0] == 2
    hf.export_hf_dir(params, config, tmp_path, tokenizer=tokenizer)
    model = transformers.JanusForConditionalGeneration.from_pretrained(tmp_path).eval()
    exported = _state_dict(model)
    assert sorted(exported) == sorted(original_tensors)
    for name, x in original_tensors.items():
        np.testing.assert_array_equal(exported[name], x, err_msg=name)
    # And the re-import gives the same config and tokenizer ids.
    _, config2, tokenizer2 = hf.import_hf_dir(tmp_path, scan_layers=scan_layers)
    assert config2 == config
    assert tokenizer2.convert_tokens_to_ids("<end_of_image>") == config.eoi_token_id


def test_import_applies_execution_options(hf_tiny_dir):
    """Execution options land in config.text (what the 1B GPU benchmark relies on)."""
    _, config, _ = hf.import_hf_dir(hf_tiny_dir, scan_layers=True, remat_policy="dots_saveable",
                                    dtype="bfloat16", attention_impl="auto")
    t = config.text
    assert (t.scan_layers, t.remat_policy, t.dtype, t.attention_impl) == (
        True, "dots_saveable", "bfloat16", "auto")
    with pytest.raises(ConfigError, match="attention_impl 'flash' is unknown"):
        hf.import_hf_dir(hf_tiny_dir, attention_impl="flash")


def test_exported_dir_generates_images_with_hf(hf_tiny_dir, hf_tiny_model, tmp_path):
    """generation_config.json carries bos/pad/boi, so HF image generate runs without extra kwargs
    and gives the same greedy tokens as the original model."""
    params, config, tokenizer = hf.import_hf_dir(hf_tiny_dir)
    hf.export_hf_dir(params, config, tmp_path, tokenizer=tokenizer)
    model = transformers.JanusForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[config.bos_token_id, 5, 6, 7, config.boi_token_id]])
    with torch.no_grad():
        ours = model.generate(ids, attention_mask=torch.ones_like(ids), generation_mode="image",
                              do_sample=False)
        ref = hf_tiny_model.generate(ids, attention_mask=torch.ones_like(ids),
                                     generation_mode="image", do_sample=False)
    assert ours.shape == (1, config.num_image_tokens)
    np.testing.assert_array_equal(ours.numpy(), ref.numpy())


def test_config_mapping_both_ways(hf_tiny_dir):
    hf_config = json.loads((hf_tiny_dir / hf.CONFIG_FILE).read_text())
    config = hf.hf_config_to_jaxgen(hf_config)
    again = hf.hf_config_to_jaxgen(hf.jaxgen_config_to_hf(config))
    assert again == config
    assert config.vq.grid == hf_config["vq_config"]["num_patches"]
    assert config.text.num_key_value_heads == 2 and config.text.head_dim == 16


def _copy_dir(src, dst, tensors=None, config_edit=None):
    shutil.copytree(src, dst)
    if tensors is not None:
        save_file(tensors, str(dst / hf.WEIGHTS_FILE), metadata={"format": "pt"})
    if config_edit is not None:
        cfg = json.loads((dst / hf.CONFIG_FILE).read_text())
        config_edit(cfg)
        (dst / hf.CONFIG_FILE).write_text(json.dumps(cfg))
    return dst


def test_wrong_shape_names_tensor_and_both_shapes(hf_tiny_dir, original_tensors, tmp_path):
    name = "model.language_model.layers.1.self_attn.k_proj.weight"
    bad = dict(original_tensors)
    bad[name] = np.zeros((48, 64), np.float32)
    d = _copy_dir(hf_tiny_dir, tmp_path / "m", tensors=bad)
    with pytest.raises(CheckpointError) as e:
        hf.import_hf_dir(d)
    msg = str(e.value)
    assert name in msg and "(48, 64)" in msg and "(32, 64)" in msg


def test_missing_and_unexpected_tensors_are_named(hf_tiny_dir, original_tensors, tmp_path):
    missing = dict(original_tensors)
    del missing["model.generation_head.vision_head.bias"]
    with pytest.raises(CheckpointError, match=r"missing.*model\.generation_head\.vision_head\.bias"):
        hf.import_hf_dir(_copy_dir(hf_tiny_dir, tmp_path / "a", tensors=missing))
    extra = dict(original_tensors)
    extra["model.language_model.layers.2.mlp.up_proj.weight"] = np.zeros((128, 64), np.float32)
    with pytest.raises(CheckpointError, match=r"unexpected.*layers\.2\.mlp\.up_proj\.weight"):
        hf.import_hf_dir(_copy_dir(hf_tiny_dir, tmp_path / "b", tensors=extra))
    vq_missing = dict(original_tensors)
    del vq_missing["model.vqmodel.quant_conv.bias"]
    with pytest.raises(CheckpointError, match="quant_conv.bias"):
        hf.import_hf_dir(_copy_dir(hf_tiny_dir, tmp_path / "c", tensors=vq_missing))


def test_missing_directory_and_files(hf_tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match=r"does not exist.*config\.json"):
        hf.import_hf_dir(tmp_path / "nowhere")
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    shutil.copy(hf_tiny_dir / hf.CONFIG_FILE, only_config)
    with pytest.raises(CheckpointError, match=r"no model\.safetensors") as e:
        hf.import_hf_dir(only_config)
    assert str(only_config) in str(e.value)
    (only_config / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="pickle files are never loaded"):
        hf.import_hf_dir(only_config)
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    shutil.copy(hf_tiny_dir / hf.WEIGHTS_FILE, no_config)
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        hf.import_hf_dir(no_config)


def test_missing_shard_in_index(hf_tiny_dir, tmp_path):
    d = _copy_dir(hf_tiny_dir, tmp_path / "m")
    index = {"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (d / hf.WEIGHTS_INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        hf.import_hf_dir(d)


def test_unknown_and_unsupported_config_keys(hf_tiny_dir, tmp_path):
    def add_key(cfg):
        cfg["text_config"]["sliding_windoww"] = 4

    with pytest.raises(ConfigError, match=r"sliding_windoww.*text_config"):
        hf.import_hf_dir(_copy_dir(hf_tiny_dir, tmp_path / "a", config_edit=add_key))

    def bias(cfg):
        cfg["text_config"]["attention_bias"] = True

    with pytest.raises(ConfigError, match=r"attention_bias"):
        hf.import_hf_dir(_copy_dir(hf_tiny_dir, tmp_path / "b", config_edit=bias))
    with pytest.raises(ConfigError, match="unknown key"):
        from jaxgen.models.config import JanusConfig
        JanusConfig.from_dict({"text": {"hiden_size": 3}})


def test_sharded_checkpoint_and_tied_lm_head(hf_tiny_dir, original_tensors, tmp_path):
    """An index + two shards loads; a tied checkpoint without lm_head.weight reuses embed_tokens."""
    d = tmp_path / "sharded"
    d.mkdir()
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf_tiny_dir / f, d)
    names = sorted(original_tensors)
    names.remove("lm_head.weight")
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half],
              "model-00002-of-00002.safetensors": names[half:]}
    for file, keys in shards.items():
        save_file({k: original_tensors[k] for k in keys}, str(d / file), metadata={"format": "pt"})
    index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (d / hf.WEIGHTS_INDEX_FILE).write_text(json.dumps(index))
    cfg = json.loads((d / hf.CONFIG_FILE).read_text())
    cfg["tie_word_embeddings"] = True
    (d / hf.CONFIG_FILE).write_text(json.dumps(cfg))
    params, config, _ = hf.import_hf_dir(d)
    np.testing.assert_array_equal(np.asarray(params["lm_head"]["kernel"]),
                                  original_tensors["model.language_model.embed_tokens.weight"].T)


def test_export_rejects_grid_mismatch(hf_tiny_dir, tmp_path):
    params, config, _ = hf.import_hf_dir(hf_tiny_dir)
    bad = config.replace(vq=config.vq.__class__(**{**config.vq.__dict__, "image_size": 32}))
    with pytest.raises(ConfigError, match="VQ grid"):
        hf.export_hf_dir(params, bad, tmp_path)
    assert not (tmp_path / hf.WEIGHTS_FILE).exists()


def test_init_params_export_to_hf_and_back(tmp_path):
    """Freshly initialised (scanned-layer) params have the layout conversion expects: they export
    to a directory HF loads, and import back bit-identical; param_logical_axes mirrors them."""
    import dataclasses

    from third_party.hf_janus import tiny_janus_config
    from jaxgen.models import janus

    config = tiny_janus_config()
    config = config.replace(text=dataclasses.replace(config.text, scan_layers=True))
    params = janus.init_params(config, jax.random.PRNGKey(3))
    axes = janus.param_logical_axes(config)
    flat_axes = jax.tree_util.tree_leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
    flat_params = jax.tree_util.tree_leaves(params)
    assert len(flat_axes) == len(flat_params)
    assert all(len(a) == p.ndim for a, p in zip(flat_axes, flat_params))
    assert axes["language_model"]["layers"]["self_attn"]["q_proj"]["kernel"] == ("layers", "embed", "heads")
    hf.export_hf_dir(params, config, tmp_path)
    model = transformers.JanusForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert model.config.text_config.num_key_value_heads == config.text.num_key_value_heads
    back, config2, tokenizer = hf.import_hf_dir(tmp_path, scan_layers=True)
    assert config2 == config and tokenizer is None
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(back)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))
