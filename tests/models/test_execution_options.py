"""The same weights run scanned or unrolled, with remat, in another dtype
(janus.with_execution_options): logits agree, the layer restacking round-trips bitwise, and the
loaders (GRPO policy, SFT init checkpoint) apply it."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen import checkpoint as ckpt_lib
from jaxgen.config import load_config
from jaxgen.convert.hf import import_hf_dir
from jaxgen.data import tokenizer as tok_lib
from jaxgen.errors import UserError
from jaxgen.models import janus
from jaxgen.models.config import ConfigError
from jaxgen.rewards import RewardContext
from jaxgen.rewards.vlm_judge import load_judge
from jaxgen.train import grpo, sft


@pytest.fixture(scope="module")
def unrolled():
    mc = janus.config_from_configdict(load_config("janus:tiny").model)
    mc = mc.replace(text=dataclasses.replace(mc.text, scan_layers=False, remat_policy="none"))
    return janus.init_params(mc, jax.random.PRNGKey(0)), mc


def _logits(params, mc, ids):
    emb = janus.embed_text(params, mc, ids)
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    hidden, _ = janus.decode(params, mc, emb, positions, jnp.ones(ids.shape, bool))
    return np.asarray(janus.text_logits(params, mc, hidden), np.float32)


def test_scanned_with_remat_gives_the_same_logits_and_restacks_back(unrolled):
    params, mc = unrolled
    n = mc.text.num_hidden_layers
    scanned, smc = janus.with_execution_options(params, mc, scan_layers=True, remat_policy="full")
    assert smc.text.scan_layers and smc.text.remat_policy == "full"
    lm = scanned["language_model"]
    assert "layers" in lm and not any(k.startswith("layers_") for k in lm)
    leaf = jax.tree.leaves(lm["layers"])[0]
    assert leaf.shape[0] == n
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 9), 0, mc.text.vocab_size)
    np.testing.assert_allclose(_logits(scanned, smc, ids), _logits(params, mc, ids),
                               rtol=1e-5, atol=1e-5)
    back, bmc = janus.with_execution_options(scanned, smc, scan_layers=False,
                                             remat_policy="none")
    assert bmc == mc
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 back, params)


def test_bfloat16_compute_is_close(unrolled):
    params, mc = unrolled
    _, bmc = janus.with_execution_options(params, mc, dtype="bfloat16")
    ids = jax.random.randint(jax.random.PRNGKey(2), (2, 9), 0, mc.text.vocab_size)
    got, want = _logits(params, bmc, ids), _logits(params, mc, ids)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()  # bf16 has 8 mantissa bits
    assert not np.array_equal(got, want)


def test_bad_options_are_clear_errors(unrolled):
    params, mc = unrolled
    with pytest.raises(UserError, match="unknown execution option"):
        janus.with_execution_options(params, mc, scan=True)
    with pytest.raises(ConfigError, match="attention_impl"):
        janus.with_execution_options(params, mc, attention_impl="magic")


def test_grpo_policy_and_sft_init_take_the_options(unrolled, tmp_path):
    params, mc = unrolled
    tok_lib.build_tokenizer(["a red circle", "two blue squares"], tmp_path / "tok",
                            vocab_size=200)
    tok = tok_lib.load_tokenizer(tmp_path / "tok")
    ckpt_lib.save_checkpoint(tmp_path / "ckpt", params, mc, tok)
    config = ml_collections.ConfigDict(dict(
        policy_checkpoint=str(tmp_path / "ckpt"),
        model_options=dict(scan_layers=True, remat_policy="dots_saveable")))
    p, pmc, _ = grpo.load_policy(config)
    assert pmc.text.scan_layers and pmc.text.remat_policy == "dots_saveable"
    restacked, _ = janus.with_execution_options(params, mc, scan_layers=True)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 p, restacked)
    config.model_options = {}
    p, pmc, _ = grpo.load_policy(config)  # no options: the checkpoint as saved
    assert pmc == mc and "layers_0" in p["language_model"]
    # SFT starting from the unrolled checkpoint with a scanned model
    smc = mc.replace(text=dataclasses.replace(mc.text, scan_layers=True))
    init = sft.checkpoint_init_fn(tmp_path / "ckpt", smc, params["vqmodel"])
    got = init(jax.random.PRNGKey(0))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 got["language_model"], restacked["language_model"])


def test_grpo_policy_and_judge_from_a_hugging_face_directory(hf_tiny_dir):
    """A Hugging Face Janus directory serves as GRPO policy (with execution options) and as a
    reward judge, as a jaxgen checkpoint does."""
    want, want_config, _ = import_hf_dir(str(hf_tiny_dir), scan_layers=True)
    config = ml_collections.ConfigDict(dict(policy_checkpoint=str(hf_tiny_dir),
                                            model_options=dict(scan_layers=True)))
    params, model_config, tokenizer = grpo.load_policy(config)
    assert model_config == want_config and tokenizer is not None
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 params, want)
    # the fixture's word-level vocabulary is w0, w1, ...: two of its words answer yes / no
    judge = load_judge(RewardContext(), str(hf_tiny_dir), yes_words=("w5",), no_words=("w6",))
    assert (judge.yes_ids, judge.no_ids) == ((5,), (6,))
    assert judge.config.text.hidden_size == want_config.text.hidden_size
    np.testing.assert_array_equal(np.asarray(judge.params["lm_head"]["kernel"]),
                                  np.asarray(want["lm_head"]["kernel"]))
