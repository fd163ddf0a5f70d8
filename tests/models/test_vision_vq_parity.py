"""Parity of jaxgen's VisionTower / VQModel with transformers' JanusVisionModel / JanusVQVAE.

Tiny random HF models are built offline (every parameter perturbed so norms, biases and the
codebook are far from their init), converted with jaxgen.convert.hf_vision_vq, and compared in
float32 on CPU: vision hidden states and VQ pixels within 1e-4 absolute, VQ codes exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp
import flax.linen as nn
from transformers.models.janus.configuration_janus import JanusVisionConfig, JanusVQVAEConfig
from transformers.models.janus.modeling_janus import JanusVisionModel, JanusVQVAE

from jaxgen.convert.hf_vision_vq import vision_from_hf, vision_to_hf, vq_from_hf, vq_to_hf
from jaxgen.errors import CheckpointError, UserError
from jaxgen.models.config import ConfigError, VisionConfig, VQConfig
from jaxgen.models.vision import VisionTower, conv_stem_widths
from jaxgen.models.vq import VQModel, l2_normalize

ATOL = 1e-4
PERTURB_STD = 0.2
BATCH = 2

VISION_KW = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                 patch_size=8, mlp_ratio=2.0, layer_norm_eps=1e-6)
# Three levels: two stride-2 downsamples / upsamples, attention at the 4x4 level.
VQ_KW = dict(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32,
             channel_multiplier=(1, 1, 2), num_res_blocks=2)
VQ_IMAGE = 16


def _perturbed_state(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(PERTURB_STD * torch.randn_like(p))
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _nhwc(x_nchw):
    return jnp.asarray(x_nchw.permute(0, 2, 3, 1).numpy())


@pytest.fixture(scope="module")
def vision():
    hf = JanusVisionModel(JanusVisionConfig(**VISION_KW)).eval()
    tensors = _perturbed_state(hf, 0)
    cfg = VisionConfig(**VISION_KW)
    return hf, tensors, cfg, vision_from_hf(tensors, cfg)


@pytest.fixture(scope="module")
def vq():
    grid = VQ_IMAGE // 2 ** (len(VQ_KW["channel_multiplier"]) - 1)
    hf = JanusVQVAE(JanusVQVAEConfig(**{**VQ_KW, "channel_multiplier": list(VQ_KW["channel_multiplier"])},
                                     num_patches=grid)).eval()
    tensors = _perturbed_state(hf, 1)
    cfg = VQConfig(**VQ_KW, image_size=VQ_IMAGE)
    return hf, tensors, cfg, vq_from_hf(tensors, cfg)


@functools.partial(jax.jit, static_argnames=("cfg", "method", "l2"))
def _vq_apply(params, x, cfg, method="__call__", l2=None):
    """Jitted VQModel method (compiled once per config/method, shared by the tests)."""
    return VQModel(cfg, l2_norm_lookup=l2).apply({"params": params}, x, method=getattr(VQModel, method))


def _pixels(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=gen) * 2 - 1


# ------------------------------------------------------------------------------ vision tower


def test_vision_last_hidden_state_matches_hf(vision):
    hf, _, cfg, params = vision
    x = _pixels((BATCH, 3, cfg.image_size, cfg.image_size), 10)
    with torch.no_grad():
        ref = hf(x).last_hidden_state.numpy()
    out = jax.jit(VisionTower(cfg).apply)({"params": params}, _nhwc(x))
    assert out.shape == (BATCH, cfg.num_image_tokens, cfg.hidden_size)
    np.testing.assert_allclose(np.asarray(out), ref, atol=ATOL, rtol=0)
    assert np.abs(ref).max() > 0.5  # the comparison is not between near-zero tensors


def test_vision_round_trip_is_exact(vision):
    _, tensors, cfg, params = vision
    back = vision_to_hf(params, cfg)
    assert set(back) == set(tensors)
    for name, x in tensors.items():
        assert back[name].dtype == x.dtype and np.array_equal(back[name], x), name


class _TorchStem(torch.nn.Sequential):
    @property
    def weight(self):  # HF's embeddings read patch_embedding.weight.dtype
        return self[0].weight


def test_conv_stem_matches_hf_tower_with_a_torch_conv_stem(vision):
    """vision.stem='conv': HF's tower with its patch embedding swapped for the same stride-2 3x3
    torch convolutions (GELU between) gives our conv-stem tower's output; the encoder, position
    embedding and post-norm weights are shared with the patch-stem model."""
    hf, _, cfg, params = vision
    conv_cfg = dataclasses.replace(cfg, stem="conv")
    widths = conv_stem_widths(conv_cfg)
    assert widths == [8, 16, 32]  # patch 8 -> three halvings ending at hidden_size 32
    torch.manual_seed(3)
    convs = [torch.nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
             for c_in, c_out in zip([3] + widths[:-1], widths)]
    layers = [m for conv in convs for m in (conv, torch.nn.GELU())][:-1]
    hf_conv = copy.deepcopy(hf)
    hf_conv.embeddings.patch_embedding = _TorchStem(*layers)
    embeddings = {k: v for k, v in params["embeddings"].items() if k != "patch_embedding"}
    for i, conv in enumerate(convs):
        embeddings[f"stem_{i}"] = {"kernel": jnp.asarray(conv.weight.detach().permute(2, 3, 1, 0).numpy()),
                                   "bias": jnp.asarray(conv.bias.detach().numpy())}
    conv_params = {**params, "embeddings": embeddings}
    x = _pixels((BATCH, 3, cfg.image_size, cfg.image_size), 11)
    with torch.no_grad():
        ref = hf_conv(x).last_hidden_state.numpy()
    tower = VisionTower(conv_cfg)
    shapes = jax.tree.map(lambda a: a.shape, nn.unbox(jax.eval_shape(
        tower.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))["params"])
    assert shapes == jax.tree.map(lambda a: a.shape, conv_params)
    out = jax.jit(tower.apply)({"params": conv_params}, _nhwc(x))
    np.testing.assert_allclose(np.asarray(out), ref, atol=ATOL, rtol=0)
    assert np.abs(ref).max() > 0.5


def test_conv_stem_config_errors():
    with pytest.raises(ConfigError, match="vision.stem='pixels'"):
        VisionConfig(**VISION_KW, stem="pixels")
    with pytest.raises(ConfigError, match="power of two"):
        VisionConfig(**{**VISION_KW, "patch_size": 6}, stem="conv")


def test_vision_rejects_wrong_image_size(vision):
    _, _, cfg, params = vision
    with pytest.raises(UserError, match="vision.image_size"):
        VisionTower(cfg).apply({"params": params}, jnp.zeros((1, 16, 16, 3)))


# ------------------------------------------------------------------------------ VQ tokenizer


def test_vq_encode_codes_equal_hf(vq):
    hf, _, cfg, params = vq
    x = _pixels((BATCH, 3, VQ_IMAGE, VQ_IMAGE), 11)
    with torch.no_grad():
        ref = hf.encode(x).image_tokens.numpy().reshape(BATCH, -1)
    codes = _vq_apply(params, _nhwc(x), cfg, "encode")
    assert codes.dtype == jnp.int32 and codes.shape == (BATCH, cfg.num_image_tokens)
    np.testing.assert_array_equal(np.asarray(codes), ref)
    assert len(np.unique(ref)) > 1


def test_vq_continuous_latents_match_hf_quant_conv(vq):
    hf, _, cfg, params = vq
    x = _pixels((BATCH, 3, VQ_IMAGE, VQ_IMAGE), 12)
    with torch.no_grad():
        ref = hf.quant_conv(hf.encoder(x)).permute(0, 2, 3, 1).numpy()
    z = _vq_apply(params, _nhwc(x), cfg, "encode_continuous")
    np.testing.assert_allclose(np.asarray(z), ref, atol=ATOL, rtol=0)


def test_vq_decode_codes_matches_hf(vq):
    hf, _, cfg, params = vq
    codes = np.random.default_rng(0).integers(0, cfg.num_embeddings, (BATCH, cfg.num_image_tokens))
    with torch.no_grad():
        ref = hf.decode(torch.as_tensor(codes)).permute(0, 2, 3, 1).numpy()
    out = _vq_apply(params, jnp.asarray(codes, jnp.int32), cfg, "decode_codes")
    assert out.shape == (BATCH, VQ_IMAGE, VQ_IMAGE, 3)
    np.testing.assert_allclose(np.asarray(out), ref, atol=ATOL, rtol=0)
    assert np.abs(ref).max() > 0.5


def test_vq_full_reconstruction_matches_hf(vq):
    hf, _, cfg, params = vq
    x = _pixels((BATCH, 3, VQ_IMAGE, VQ_IMAGE), 13)
    with torch.no_grad():
        ref = hf(x).decoded_pixel_values.permute(0, 2, 3, 1).numpy()
    recon, codes, codebook_loss, commit_loss = _vq_apply(params, _nhwc(x), cfg)
    np.testing.assert_allclose(np.asarray(recon), ref, atol=ATOL, rtol=0)
    assert np.isfinite(float(codebook_loss)) and np.isfinite(float(commit_loss))


def test_vq_round_trip_is_exact(vq):
    _, tensors, cfg, params = vq
    back = vq_to_hf(params, cfg)
    assert set(back) == set(tensors)
    for name, x in tensors.items():
        assert back[name].dtype == x.dtype and np.array_equal(back[name], x), name


def test_l2_lookup_is_cosine_nearest_code_and_agrees_with_hf_on_unit_codebook(vq):
    _, _, cfg, params = vq
    x = _nhwc(_pixels((BATCH, 3, VQ_IMAGE, VQ_IMAGE), 14))
    z = _vq_apply(params, x, cfg, "encode_continuous")

    def codes_of(p, l2):
        return np.asarray(_vq_apply(p, z, cfg, "quantize", l2)[1])

    book = np.asarray(params["codebook"])
    z_nd = np.asarray(z).reshape(-1, cfg.embed_dim)
    cos = (z_nd / np.linalg.norm(z_nd, axis=1, keepdims=True)) @ (
        book / np.linalg.norm(book, axis=1, keepdims=True)).T
    np.testing.assert_array_equal(codes_of(params, True).reshape(-1), cos.argmax(1))
    # With unit-norm rows, HF's raw-distance lookup picks the same codes.
    unit = {**params, "codebook": np.asarray(l2_normalize(jnp.asarray(book)))}
    np.testing.assert_array_equal(codes_of(unit, False), codes_of(unit, True))


def test_quantize_losses_and_straight_through_gradient(vq):
    _, _, cfg, params = vq
    model = VQModel(cfg)
    z = jax.random.normal(jax.random.PRNGKey(0), (BATCH, 4, 4, cfg.embed_dim))
    zq, codes, cb_loss, commit_loss = model.apply({"params": params}, z, method=VQModel.quantize)
    rows = np.asarray(l2_normalize(jnp.asarray(params["codebook"])))[np.asarray(codes)].reshape(z.shape)
    np.testing.assert_allclose(np.asarray(zq), rows, atol=1e-6)
    expected = np.mean((rows - np.asarray(z)) ** 2)
    np.testing.assert_allclose(float(cb_loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(commit_loss), expected, rtol=1e-5)

    def part(p, z, which):
        out = model.apply({"params": p}, z, method=VQModel.quantize)
        return jnp.sum(out[0] * 3.0) if which == 0 else out[which]

    @jax.jit
    def grads(p, z):
        return [jax.grad(part, argnums=(0, 1))(p, z, which) for which in (0, 2, 3)]

    (_, g_st), (g_p_cb, g_z_cb), (g_p_commit, g_z_commit) = grads(params, z)
    # Straight-through: d sum(3 zq) / dz = 3 everywhere.
    np.testing.assert_allclose(np.asarray(g_st), 3.0, atol=1e-6)
    # Codebook loss moves the codebook only; commitment loss moves the encoder output only.
    assert np.abs(np.asarray(g_p_cb["codebook"])).max() > 0 and np.abs(np.asarray(g_z_cb)).max() == 0
    assert np.abs(np.asarray(g_p_commit["codebook"])).max() == 0
    assert np.abs(np.asarray(g_z_commit)).max() > 0


def test_params_carry_logical_axes():
    cfg = VQConfig(**VQ_KW, image_size=VQ_IMAGE)
    boxed = jax.eval_shape(lambda r: VQModel(cfg).init(r, jnp.zeros((1, VQ_IMAGE, VQ_IMAGE, 3))),
                           jax.random.PRNGKey(0))["params"]
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(l, nn.Partitioned) for l in leaves)
    assert boxed["codebook"].names == ("codebook", None)
    assert boxed["encoder"]["conv_in"]["kernel"].names == (None, None, "conv_in", "conv_out")
    vcfg = VisionConfig(**VISION_KW)
    vboxed = jax.eval_shape(lambda r: VisionTower(vcfg).init(r, jnp.zeros((1, 32, 32, 3))),
                            jax.random.PRNGKey(0))["params"]
    vleaves = jax.tree_util.tree_leaves(vboxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(l, nn.Partitioned) for l in vleaves)
    assert vboxed["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"].names == ("embed", "mlp")


# ------------------------------------------------------------------------------ errors


def test_shape_mismatch_names_tensor_and_both_shapes(vq, vision):
    _, tensors, cfg, _ = vq
    bad = dict(tensors)
    bad["quantize.embedding.weight"] = np.zeros((32, 8), np.float32)
    with pytest.raises(CheckpointError, match=r"quantize\.embedding\.weight.*\(32, 8\).*\(64, 8\)"):
        vq_from_hf(bad, cfg)
    _, vtensors, vcfg, _ = vision
    bad = dict(vtensors)
    bad["encoder.layers.1.mlp.fc1.weight"] = np.zeros((64, 16), np.float32)
    with pytest.raises(CheckpointError,
                       match=r"encoder\.layers\.1\.mlp\.fc1\.weight.*\(64, 16\).*\(64, 32\)"):
        vision_from_hf(bad, vcfg)


def test_missing_and_unexpected_tensors_are_named(vq):
    _, tensors, cfg, _ = vq
    missing = {k: v for k, v in tensors.items() if k != "decoder.up.0.attn.1.q.weight"}
    with pytest.raises(CheckpointError, match=r"missing.*decoder\.up\.0\.attn\.1\.q\.weight"):
        vq_from_hf(missing, cfg)
    extra = {**tensors, "encoder.down.9.block.0.conv1.weight": np.zeros((1,), np.float32)}
    with pytest.raises(CheckpointError, match=r"unexpected.*encoder\.down\.9\.block\.0\.conv1\.weight"):
        vq_from_hf(extra, cfg)


def test_bad_vq_config_and_codes_raise_user_errors(vq):
    _, _, cfg, params = vq
    with pytest.raises(UserError, match="multiple of 32"):
        VQModel(VQConfig(**{**VQ_KW, "base_channels": 24}, image_size=VQ_IMAGE)).init(
            jax.random.PRNGKey(0), jnp.zeros((1, VQ_IMAGE, VQ_IMAGE, 3)))
    with pytest.raises(UserError, match="square grid"):
        VQModel(cfg).apply({"params": params}, jnp.zeros((1, 15), jnp.int32), method=VQModel.decode_codes)
