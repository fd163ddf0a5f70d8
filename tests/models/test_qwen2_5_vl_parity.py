"""Parity of jaxgen's Qwen2.5-VL against transformers' Qwen2_5_VLForConditionalGeneration
(PyTorch, CPU, float32) on a tiny random model built offline.

The tiny model has window attention that splits the images (patch 4, merge 2, window 16 px: 2x2
merged tokens per window, partial windows at the edges), full attention in 2 of its 4 vision
blocks, GQA (4 query / 2 KV heads) and untied head; it is saved sharded and imported with
jaxgen.convert.qwen2_5_vl. Two images of different sizes (grids 8x12 and 6x10 patches) go
through HF's own image processor, in a left-padded batch of two prompts. Weights are drawn
with std 0.2 so features (|x| up to ~12) and logits (up to ~6) are O(1). Tolerance 1e-4
absolute (measured on CPU: features 9e-6, logits 7e-6, tied head 2e-5); greedy tokens identical.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxgen import parallel
from jaxgen.convert.qwen2_5_vl import import_qwen2_5_vl_dir
from jaxgen.errors import CheckpointError, UserError
from jaxgen.models import qwen2_5_vl as qvl

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
IMAGE_SIZES = ((32, 48), (24, 40))  # pixels (h, w) -> grids (1, 8, 12), (1, 6, 10)
IMAGE_ID, VISION_START, VISION_END = 120, 122, 123
MAX_NEW = 8
# Larger than HF's 0.02 so features and logits are O(1) and 1e-4 is a tight tolerance.
INIT_STD = 0.2


def _hf_config(tie=False):
    return transformers.Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
            max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
            initializer_range=INIT_STD,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": [2, 3, 3]}),
        vision_config=dict(
            depth=4, hidden_size=32, intermediate_size=48, num_heads=2, in_channels=3,
            patch_size=4, spatial_merge_size=2, temporal_patch_size=2, window_size=16,
            out_hidden_size=64, fullatt_block_indexes=[1, 3], initializer_range=INIT_STD),
        image_token_id=IMAGE_ID, video_token_id=121, vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END, tie_word_embeddings=tie)


def _build(tmp, tie=False, seed=0, shard="60KB"):
    torch.manual_seed(seed)
    model = transformers.Qwen2_5_VLForConditionalGeneration(_hf_config(tie)).eval()
    model.config._attn_implementation = "eager"
    model.save_pretrained(tmp, safe_serialization=True, max_shard_size=shard)
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2_5_vl_tiny")
    return path, _build(path)


@pytest.fixture(scope="module")
def converted(hf_dir):
    return import_qwen2_5_vl_dir(hf_dir[0])


@pytest.fixture(scope="module")
def images():
    """pixel_values [156, 96] and image_grid_thw from HF's own processor on random images."""
    try:
        from transformers import Qwen2VLImageProcessorPil as Processor
    except ImportError:
        from transformers import Qwen2VLImageProcessor as Processor
    proc = Processor(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16,
                     max_pixels=64 * 64)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in IMAGE_SIZES]
    out = proc(images=imgs, return_tensors="np")
    grid = qvl.normalize_grid(out["image_grid_thw"])
    assert grid == ((1, 8, 12), (1, 6, 10))
    return np.asarray(out["pixel_values"], np.float32), grid


@pytest.fixture(scope="module")
def prompts(images):
    """Left-padded ids / mask [2, L]: text, <vision_start>, the image tokens, <vision_end>,
    text; the rows have different lengths."""
    _, grid = images
    rng = np.random.default_rng(1)
    rows = []
    for (t, h, w), (pre, post) in zip(grid, ((3, 5), (2, 4))):
        rows.append([1, *rng.integers(3, 100, pre), VISION_START, *[IMAGE_ID] * (t * h * w // 4),
                     VISION_END, *rng.integers(3, 100, post)])
    length = max(map(len, rows))
    ids, mask = np.zeros((2, length), np.int64), np.zeros((2, length), np.int64)
    for i, r in enumerate(rows):
        ids[i, length - len(r):], mask[i, length - len(r):] = r, 1
    assert mask[0].sum() != mask[1].sum()
    return ids, mask


def _hf_inputs(ids, mask, pixel_values, grid):
    return dict(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                pixel_values=torch.from_numpy(pixel_values), image_grid_thw=torch.tensor(grid),
                mm_token_type_ids=torch.from_numpy((ids == IMAGE_ID).astype(np.int64)))


image_features = jax.jit(qvl.image_features, static_argnums=(1, 3))
forward = jax.jit(qvl.forward, static_argnums=(1, 5))


def test_windows_split_the_images(images):
    _, grid = images
    plan = qvl.vision_plan(qvl.VisionConfig(depth=4, hidden_size=32, intermediate_size=48,
                                            num_heads=2, patch_size=4, window_size=16,
                                            out_hidden_size=64, fullatt_block_indexes=(1, 3)),
                           grid)
    assert plan["full"]["valid"].shape == (2, 96)  # one segment per image
    lengths = plan["window"]["valid"].sum(1)
    assert len(lengths) > 4 and lengths.max() == 16 and lengths.min() < 16  # partial windows


def test_config_imported(converted):
    _, config = converted
    assert config.text.num_key_value_heads < config.text.num_attention_heads
    assert config.vision.fullatt_block_indexes == (1, 3) and config.vision.depth == 4
    assert config.text.mrope_section == (2, 3, 3) and not config.tie_word_embeddings
    assert config.eos_token_ids == (2,) and config.pad_token_id == 0


def test_vision_features_match(hf_dir, converted, images):
    params, config = converted
    pixel_values, grid = images
    with torch.no_grad():
        ref = hf_dir[1].model.visual(torch.from_numpy(pixel_values),
                                     grid_thw=torch.tensor(grid)).pooler_output.numpy()
    out = np.asarray(image_features(params, config, pixel_values, grid))
    assert out.shape == ref.shape == (24 + 15, 64)
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=0)


def test_rope_positions_match(hf_dir, converted, images, prompts):
    _, config = converted
    ids, mask = prompts
    with torch.no_grad():
        ref, deltas = hf_dir[1].model.get_rope_index(
            torch.from_numpy(ids), torch.from_numpy((ids == IMAGE_ID).astype(np.int64)),
            torch.tensor(images[1]), attention_mask=torch.from_numpy(mask))
    pos, next_pos = jax.jit(qvl.rope_positions, static_argnums=(0, 3))(
        config, jnp.asarray(ids), jnp.asarray(mask), images[1])
    np.testing.assert_array_equal(np.asarray(pos), ref.numpy())
    np.testing.assert_array_equal(np.asarray(next_pos), mask.sum(1) + deltas.numpy()[:, 0])


def test_logits_match(hf_dir, converted, images, prompts):
    params, config = converted
    ids, mask = prompts
    qvl.check_image_tokens(config, ids, images[1])
    with torch.no_grad():
        ref = hf_dir[1](**_hf_inputs(ids, mask, *images)).logits.numpy()
    out = np.asarray(forward(params, config, jnp.asarray(ids), jnp.asarray(mask), images[0],
                             images[1]))
    real = mask.astype(bool)  # HF's padded rows hold values nobody reads
    np.testing.assert_allclose(out[real], ref[real], atol=ATOL, rtol=0)


def _generate(converted, images, prompts, temperature, seed, eos):
    """One calling form (temperature, eos_ids [1] positional) so every call shares one compile."""
    params, config = converted
    ids, mask = prompts
    return np.asarray(qvl.generate(params, config, jnp.asarray(ids), jnp.asarray(mask),
                                   images[0], jax.random.PRNGKey(seed), temperature,
                                   np.asarray([eos], np.int32), grid_thw=images[1],
                                   max_new_tokens=MAX_NEW))


def _hf_generate(hf_dir, config, images, prompts, eos):
    ids, mask = prompts
    with torch.no_grad():
        out = hf_dir[1].generate(**_hf_inputs(ids, mask, *images), max_new_tokens=MAX_NEW,
                                 do_sample=False, eos_token_id=eos,
                                 pad_token_id=config.pad_token_id)
    return out[:, ids.shape[1]:].numpy()


def test_greedy_generation_matches(hf_dir, converted, images, prompts):
    config = converted[1]
    eos = config.eos_token_ids[0]
    mine = _generate(converted, images, prompts, 0.0, 0, eos)
    ref = _hf_generate(hf_dir, config, images, prompts, eos)
    np.testing.assert_array_equal(mine[:, :ref.shape[1]], ref)
    # An eos that row 0 writes early: that row continues with pad, the other runs on (HF too).
    eos = int(mine[0, 2])
    mine = _generate(converted, images, prompts, 0.0, 0, eos)
    ref = _hf_generate(hf_dir, config, images, prompts, eos)
    assert (mine[0, 3:] == config.pad_token_id).all()
    np.testing.assert_array_equal(mine[:, :ref.shape[1]], ref)


def test_sampling_at_tiny_temperature_is_greedy(converted, images, prompts):
    config = converted[1]
    eos = config.eos_token_ids[0]
    run = lambda temperature, seed: _generate(converted, images, prompts, temperature, seed, eos)
    np.testing.assert_array_equal(run(1e-4, 3), run(0.0, 0))
    hot = run(5.0, 1)
    assert hot.shape == (2, MAX_NEW) and ((hot >= 0) & (hot < config.text.vocab_size)).all()
    np.testing.assert_array_equal(hot, run(5.0, 1))  # a given rng gives the same tokens
    assert (hot != run(5.0, 2)).any()


def test_execution_options_keep_the_logits(hf_dir, converted, images, prompts):
    """Scanned + rematerialised layers, imported straight onto shardings of a mesh, give the
    same logits; bfloat16 compute stays close."""
    params, config = converted
    ids, mask = prompts
    args = (jnp.asarray(ids), jnp.asarray(mask), images[0], images[1])
    ref = np.asarray(forward(params, config, *args))
    real = mask.astype(bool)
    _, scan_cfg = qvl.with_execution_options(params, config, scan_layers=True,
                                             remat_policy="full")
    mesh = parallel.make_mesh()
    shardings = parallel.param_shardings(qvl.param_shapes(scan_cfg),
                                         qvl.param_logical_axes(scan_cfg), mesh, "fsdp_tp")
    scan_params, scan_cfg2 = import_qwen2_5_vl_dir(hf_dir[0], scan_layers=True,
                                                   remat_policy="full", shardings=shardings)
    assert scan_cfg2 == scan_cfg
    assert scan_params["language_model"]["layers"]["self_attn"]["q_proj"]["kernel"].shape == \
        (2, 64, 64)
    out = np.asarray(forward(scan_params, scan_cfg, *args))
    np.testing.assert_allclose(out[real], ref[real], atol=1e-5, rtol=0)
    bf_params, bf_cfg = qvl.with_execution_options(params, config, dtype="bfloat16")
    out = np.asarray(forward(bf_params, bf_cfg, *args)).astype(np.float32)
    assert np.abs(out[real] - ref[real]).max() < 0.05 * np.abs(ref[real]).max() + 1e-2


def test_param_logical_axes(converted):
    params, config = converted
    axes = qvl.param_logical_axes(config)
    rules = parallel.LAYOUT_RULES["fsdp_tp"]
    leaves, treedef = jax.tree.flatten(params)
    ax_leaves = treedef.flatten_up_to(axes)
    for x, ax in zip(leaves, ax_leaves):
        assert isinstance(ax, tuple) and len(ax) == x.ndim
        assert all(a is None or a in rules for a in ax)
    named = [a for ax in ax_leaves for a in ax if a]
    assert {"vocab", "embed", "heads", "kv_heads", "mlp", "norm"} <= set(named)


def test_tied_head(tmp_path, images, prompts):
    path = tmp_path / "tied"
    hf = _build(path, tie=True, seed=1, shard="10GB")
    assert not (path / "model.safetensors.index.json").exists()
    params, config = import_qwen2_5_vl_dir(path)
    assert config.tie_word_embeddings and "lm_head" not in params
    ids, mask = prompts
    with torch.no_grad():
        ref = hf(**_hf_inputs(ids, mask, *images)).logits.numpy()
    out = np.asarray(forward(params, config, jnp.asarray(ids), jnp.asarray(mask), *images))
    real = mask.astype(bool)
    np.testing.assert_allclose(out[real], ref[real], atol=ATOL, rtol=0)


def _copy(hf_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(hf_dir[0], dst)
    return dst


def _edit_config(path, edit):
    cfg = json.loads((path / "config.json").read_text())
    edit(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def test_import_wrong_model_type(hf_dir, tmp_path):
    path = _copy(hf_dir, tmp_path)
    _edit_config(path, lambda c: c.update(model_type="qwen2_vl"))
    with pytest.raises(CheckpointError, match="model_type 'qwen2_vl'"):
        import_qwen2_5_vl_dir(path)


def test_import_missing_shard(hf_dir, tmp_path):
    path = _copy(hf_dir, tmp_path)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    (path / shards[-1]).unlink()
    with pytest.raises(CheckpointError, match=f"missing 1 of the {len(shards)}.*{shards[-1]}"):
        import_qwen2_5_vl_dir(path)


def test_import_corrupted_shard(hf_dir, tmp_path):
    path = _copy(hf_dir, tmp_path)
    shard = sorted(path.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        import_qwen2_5_vl_dir(path)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["text_config"].update(layer_types=["full_attention", "sliding_attention"]),
     "sliding-window"),
    (lambda c: c["text_config"]["rope_parameters"].update(rope_type="yarn"), "rope type 'yarn'"),
    (lambda c: c["text_config"]["rope_parameters"].update(mrope_section=[4, 4, 4]),
     "mrope_section"),
])
def test_import_unsupported_config(hf_dir, tmp_path, edit, message):
    path = _copy(hf_dir, tmp_path)
    _edit_config(path, edit)
    with pytest.raises(CheckpointError, match=message):
        import_qwen2_5_vl_dir(path)


def test_hub_flat_config_layout(hf_dir, converted, tmp_path):
    """The hub's older config.json (text keys at the top level, rope_scaling type 'mrope')."""
    path = _copy(hf_dir, tmp_path)

    def flatten_text(c):
        text = c.pop("text_config")
        rope = text.pop("rope_parameters")
        c.update(text, model_type="qwen2_5_vl", rope_theta=rope["rope_theta"],
                 rope_scaling={"type": "mrope", "mrope_section": rope["mrope_section"]})
    _edit_config(path, flatten_text)
    _, config = import_qwen2_5_vl_dir(path)
    assert config == converted[1]


def test_image_token_count_checked(converted, images, prompts):
    _, config = converted
    ids, _ = prompts
    with pytest.raises(UserError, match="image-token runs"):
        qvl.check_image_tokens(config, ids[:, 1:], ((1, 8, 12), (1, 8, 10)))


def test_import_weights_that_do_not_fit_the_config(hf_dir, tmp_path):
    path = _copy(hf_dir, tmp_path)
    _edit_config(path, lambda c: c["vision_config"].update(intermediate_size=40))
    with pytest.raises(CheckpointError, match="shape mismatches.*gate_proj"):
        import_qwen2_5_vl_dir(path)
