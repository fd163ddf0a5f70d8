"""Llama decoder: scanned vs unrolled layers, remat, KV-cached decoding, left padding.

Tolerance 1e-5 absolute (float32, same arithmetic up to reordering)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.errors import PromptTooLongError, UserError
from jaxgen.models import janus, llama
from jaxgen.models.config import ConfigError, LlamaConfig
from third_party.hf_janus import tiny_janus_config

ATOL = 1e-5
CFG = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
                  max_position_embeddings=64)
B, L = 2, 7


def _variant(**kw):
    return dataclasses.replace(CFG, **kw)


def _stack(params, n):
    out = {k: v for k, v in params.items() if not k.startswith("layers_")}
    out["layers"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs),
                                           *[params[f"layers_{i}"] for i in range(n)])
    return out


@pytest.fixture(scope="module")
def setup():
    emb = jax.random.normal(jax.random.PRNGKey(1), (B, L, CFG.hidden_size))
    pos = jnp.tile(jnp.arange(L), (B, 1))

    @jax.jit
    def init(rng):
        params = llama.LlamaModel(CFG).init(rng, emb, pos, jnp.ones((B, L), bool))["params"]
        # Norm scales away from 1 so that a wrong norm shows.
        return jax.tree_util.tree_map_with_path(
            lambda p, x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(len(str(p))), x.shape)
            if p[-1].key == "scale" else x, nn.meta.unbox(params))

    return init(jax.random.PRNGKey(0)), emb, pos


def _apply(cfg, params, *args):
    return jax.jit(lambda p, *a: llama.LlamaModel(cfg).apply({"params": p}, *a))(params, *args)


def test_param_layout_and_logical_axes():
    boxed = jax.eval_shape(
        lambda r: llama.LlamaModel(_variant(scan_layers=True)).init(
            r, jnp.zeros((1, 1, CFG.hidden_size)), jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool)),
        jax.random.PRNGKey(0))["params"]
    q = boxed["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.value.shape == (2, 32, 32) and q.names == ("layers", "embed", "heads")
    k = boxed["layers"]["self_attn"]["k_proj"]["kernel"]
    assert k.value.shape == (2, 32, 16) and k.names == ("layers", "embed", "kv_heads")
    assert boxed["embed_tokens"]["embedding"].names == ("vocab", "embed")
    assert boxed["norm"]["scale"].names == ("norm",)


def _out_and_grads(cfg, params, emb, pos, mask):
    def loss(p):
        out = llama.LlamaModel(cfg).apply({"params": p}, emb, pos, mask)[0]
        return jnp.sum(out ** 2), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return out, grads


@pytest.fixture(scope="module")
def unrolled_reference(setup):
    params, emb, pos = setup
    return _out_and_grads(CFG, params, emb, pos, jnp.ones((B, L), bool))


@pytest.mark.parametrize("remat", ["none", "full", "dots_saveable", "dots_attention_saveable"])
def test_scan_equals_unrolled(setup, unrolled_reference, remat):
    """Same outputs and gradients (every parameter) for nn.scan'ed, rematerialised layers."""
    params, emb, pos = setup
    ref, g_ref = unrolled_reference
    cfg = _variant(scan_layers=True, remat_policy=remat)
    out, grads = _out_and_grads(cfg, _stack(params, CFG.num_hidden_layers), emb, pos,
                                jnp.ones((B, L), bool))
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=0)
    g_ref = _stack(g_ref, CFG.num_hidden_layers)
    for (path, g), g0 in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(g_ref)):
        np.testing.assert_allclose(g, g0, atol=1e-4, rtol=1e-4, err_msg=str(path))


def test_unknown_remat_policy_is_a_user_error(setup):
    params, emb, pos = setup
    with pytest.raises(ConfigError, match="remat_policy 'everything'"):
        llama.LlamaModel(_variant(remat_policy="everything")).apply(
            {"params": params}, emb, pos, jnp.ones((B, L), bool))


@pytest.mark.parametrize("scan", [False, True])
def test_kv_cache_incremental_equals_full(setup, scan):
    params, emb, pos = setup
    cfg = _variant(scan_layers=scan)
    p = _stack(params, CFG.num_hidden_layers) if scan else params
    full, _ = _apply(cfg, p, emb, pos, jnp.ones((B, L), bool))
    max_len = L + 3  # spare slots stay masked out by causality
    kv_mask = jnp.ones((B, max_len), bool)
    cache = llama.init_cache(cfg, B, max_len)
    prefill = 4
    step = jax.jit(lambda p, e, ps, c, i: llama.LlamaModel(cfg).apply(
        {"params": p}, e, ps, kv_mask, c, i))
    out, cache = step(p, emb[:, :prefill], pos[:, :prefill], cache, 0)
    outs = [out]
    for i in range(prefill, L):
        out, cache = step(p, emb[:, i:i + 1], pos[:, i:i + 1], cache, i)
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=ATOL, rtol=0)
    kv, hd, n = CFG.num_key_value_heads, CFG.head_dim, CFG.num_hidden_layers
    if scan:  # stacked over layers
        assert cache["k"].shape == (n, B, kv, hd, max_len)
        assert cache["v"].shape == (n, B, kv, max_len, hd)
    else:  # one array per layer
        assert [c.shape for c in cache["k"]] == [(B, kv, hd, max_len)] * n
        assert [c.shape for c in cache["v"]] == [(B, kv, max_len, hd)] * n
    assert llama.cache_length(cache) == max_len


def test_left_padded_rows_equal_unpadded(setup):
    """A left-padded row (mask 0, positions cumsum(mask)-1) gives the unpadded row's outputs,
    both in a full pass and with a KV cache stepping past the prompt."""
    params, emb, _ = setup
    pad = 3
    row = emb[1:2, pad:]  # the real tokens of row 1
    n = L - pad
    ref, _ = _apply(CFG, params, row, jnp.arange(n)[None], jnp.ones((1, n), bool))
    mask = jnp.ones((B, L), bool).at[1, :pad].set(False)
    pos = jnp.clip(jnp.cumsum(mask, axis=1) - 1, 0, None)
    out, _ = _apply(CFG, params, emb, pos, mask)
    np.testing.assert_allclose(out[1, pad:], ref[0], atol=ATOL, rtol=0)

    # Cached: prompt = first L-1 tokens, then the last one as a decode step.
    kv_mask = jnp.concatenate([mask, jnp.ones((B, 1), bool)], axis=1)
    cache = llama.init_cache(CFG, B, L + 1)
    _, cache = _apply(CFG, params, emb[:, :-1], pos[:, :-1], kv_mask, cache, 0)
    last, _ = _apply(CFG, params, emb[:, -1:], pos[:, -1:], kv_mask, cache, L - 1)
    np.testing.assert_allclose(last[1, 0], ref[0, -1], atol=ATOL, rtol=0)


def test_causal_only_equals_the_padding_mask_on_right_padded_rows(setup):
    """causal_only (no mask built) gives the masked pass's outputs at every real position of
    right-padded rows: there the causal mask already excludes the padding."""
    params, emb, pos = setup
    mask = jnp.asarray(np.arange(L)[None] < np.array([[L], [L - 3]]))  # row 1 right-padded
    masked, _ = _apply(CFG, params, emb, pos, mask)
    causal, _ = jax.jit(lambda p, *a: llama.LlamaModel(CFG).apply({"params": p}, *a,
                                                                   causal_only=True))(
        params, emb, pos, mask)
    np.testing.assert_allclose(np.asarray(causal)[np.asarray(mask)],
                               np.asarray(masked)[np.asarray(mask)], atol=ATOL, rtol=0)


def test_decode_shape_errors_are_user_errors():
    config = tiny_janus_config()
    params = {"language_model": None}  # the checks run before any parameter is touched
    emb = jnp.zeros((2, 3, config.text.hidden_size))
    pos = jnp.zeros((2, 3), jnp.int32)
    with pytest.raises(UserError, match=r"kv_mask_bs has shape \(2, 5\), expected \(2, 3\)"):
        janus.decode(params, config, emb, pos, jnp.ones((2, 5), bool))
    cache = janus.init_cache(config, 2, 4)
    with pytest.raises(UserError, match=r"expected \(2, 4\): \[batch, the cache length"):
        janus.decode(params, config, emb, pos, jnp.ones((2, 3), bool), cache, 0)
    with pytest.raises(PromptTooLongError, match="overflows the cache of 4 slots"):
        janus.decode(params, config, emb, pos, jnp.ones((2, 4), bool), cache, 2)
    with pytest.raises(UserError, match="width 7"):
        janus.decode(params, config, jnp.zeros((2, 3, 7)), pos, jnp.ones((2, 3), bool))
    with pytest.raises(UserError, match="causal_only is for unpacked training rows"):
        janus.decode(params, config, emb, pos, jnp.ones((2, 4), bool), cache, 0,
                     causal_only=True)


# ------------------------------------------------------------------ attention implementation


def _padded_mask():
    mask = np.ones((B, L), bool)
    mask[0, :3] = False  # left padding in row 0
    return jnp.asarray(mask)


def test_attention_impl_auto_is_xla_off_gpu(setup):
    params, emb, pos = setup
    if jax.default_backend() == "gpu":
        pytest.skip("off-GPU behaviour")
    args = (params, emb, pos, _padded_mask())
    x_xla, _ = _apply(CFG, *args)
    x_auto, _ = _apply(_variant(attention_impl="auto"), *args)
    np.testing.assert_array_equal(np.asarray(x_auto), np.asarray(x_xla))


def test_attention_impl_errors():
    with pytest.raises(ConfigError, match="attention_impl 'flash' is unknown"):
        _variant(attention_impl="flash")
    if jax.default_backend() != "gpu":
        with pytest.raises(ConfigError, match="needs a GPU"):
            jax.eval_shape(lambda: llama.LlamaModel(_variant(attention_impl="cudnn")).init(
                jax.random.PRNGKey(0), jnp.zeros((1, 2, CFG.hidden_size)),
                jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), bool)))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
@pytest.mark.parametrize("padding", ["left, mask bias", "right, causal_only"])
def test_cudnn_attention_matches_xla_on_gpu(padding):
    """cuDNN attention in bf16 is as accurate as XLA attention in bf16, both measured against
    XLA in float32 (highest matmul precision): hidden states and every parameter gradient, with
    left padding (the mask goes in as a bias) or right padding under causal_only (no mask).
    Bound: cuDNN's error <= 2x XLA-bf16's error + 1e-3 of the output's scale."""
    base = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=256,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=32)
    b, l = 2, 64
    emb = jax.random.normal(jax.random.PRNGKey(1), (b, l, base.hidden_size))
    pos = jnp.tile(jnp.arange(l), (b, 1))
    causal_only = padding.startswith("right")
    mask = jnp.asarray(np.arange(l)[None] < np.array([[l], [l - 9]]) if causal_only else
                       np.arange(l)[None] >= np.array([[0], [9]]))  # row 1 padded by 9
    params = llama.LlamaModel(base).init(jax.random.PRNGKey(0), emb, pos, mask)["params"]

    def run(dtype, impl):
        # cuDNN under the remat policy that keeps its forward (janus:1b's default)
        remat = "dots_attention_saveable" if impl == "cudnn" else "none"
        cfg = dataclasses.replace(base, dtype=dtype, attention_impl=impl, remat_policy=remat)

        def loss(p):
            x, _ = llama.LlamaModel(cfg).apply({"params": p}, emb, pos, mask, None, 0, None,
                                               causal_only)
            x = jnp.where(mask[..., None], x.astype(jnp.float32), 0.0)
            return jnp.sum(x ** 2) / mask.sum(), x

        with jax.default_matmul_precision("highest"):
            (_, x), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return [np.asarray(x)] + [np.asarray(v) for v in jax.tree.leaves(g)]

    truth, xla, cudnn = run("float32", "xla"), run("bfloat16", "xla"), run("bfloat16", "cudnn")
    for t, r, c in zip(truth, xla, cudnn):
        err_xla, err_cudnn = np.abs(r - t).max(), np.abs(c - t).max()
        assert err_cudnn <= 2 * err_xla + 1e-3 * np.abs(t).max(), (err_cudnn, err_xla)
