"""Policy-degraded judge images (jaxgen.train.self_eval): teacher-forced sampling reads the image
head at each image target, the code mixing keeps its fraction, and the describe dataset gains
one "Malformed drawing." row per chosen record."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import checkpoint as ckpt_lib
from jaxgen.config import load_config
from jaxgen.data import judge as judge_data
from jaxgen.data import tokenizer as tok_lib
from jaxgen.data.build import tokenizer_corpus
from jaxgen.errors import UserError
from jaxgen.models import janus
from jaxgen.train import self_eval, sft, sft_data, sft_loss, sft_rows


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    recs = sft_data.procedural_records(48, 0, "train", 64)
    corpus = tokenizer_corpus(recs) + [judge_data.DESCRIBE_QUESTION, judge_data.DEGRADED_ANSWER]
    out = tmp_path_factory.mktemp("tok")
    tok_lib.build_tokenizer(corpus, out, vocab_size=256)
    return tok_lib.load_tokenizer(out), out


def _rows(tok, mc, config, codes_bn, prompts):
    rows = [sft_rows.generation_row(tok, mc, p, "a large red circle", c, 192, config.loss)
            for p, c in zip(prompts, codes_bn)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_teacher_forced_samples_read_the_image_head_at_each_code(tokenizer):
    """At a near-zero temperature the samples are the argmax of the image logits at the
    positions whose targets are the image codes, in order."""
    tok, _ = tokenizer
    config = load_config("sft:tiny")
    mc = sft.model_config_for(config, tok)
    params = janus.init_params(mc, jax.random.PRNGKey(0))
    codes = np.random.default_rng(0).integers(0, mc.vq.num_embeddings, (3, mc.num_image_tokens))
    # prompts of different lengths put the image at different offsets in each row
    batch = _rows(tok, mc, config, codes, ["a red circle", "a photo of two squares",
                                          "a blue triangle left of a green square"])
    got = self_eval.teacher_forced_samples(params, mc, batch, jax.random.PRNGKey(1), 1e-6,
                                           mc.num_image_tokens)
    _, img_logits = sft_loss.forward_logits(params, mc,
                                            {k: jnp.asarray(v) for k, v in batch.items()})
    for b in range(3):
        at = np.flatnonzero(batch["target_kind"][b] == sft_rows.KIND_IMAGE)
        assert len(at) == mc.num_image_tokens
        np.testing.assert_array_equal(np.asarray(got[b]),
                                      np.argmax(np.asarray(img_logits[b, at]), -1))


def test_degrade_codes_replaces_the_drawn_fraction():
    rng = np.random.default_rng(0)
    clean = np.zeros((400, 64), np.int32)
    sampled = np.ones((400, 64), np.int32)
    np.testing.assert_array_equal(self_eval.degrade_codes(clean, sampled, rng, 0.0, 0.0), clean)
    np.testing.assert_array_equal(self_eval.degrade_codes(clean, sampled, rng, 1.0, 1.0), sampled)
    mixed = self_eval.degrade_codes(clean, sampled, rng, 0.2, 0.6)
    per_row = mixed.mean(1)
    assert abs(per_row.mean() - 0.4) < 0.02 and per_row.min() > 0.05 and per_row.max() < 0.8


def test_describe_dataset_gains_degraded_rows(tokenizer, tmp_path):
    """degraded_fraction: that share of records adds a row showing the policy-degraded image
    with the answer "Malformed drawing."; without init_checkpoint it is a clear error."""
    tok, tok_dir = tokenizer
    overrides = ["--config.data.judge_task=describe", "--config.data.task_mix.generation=0.0",
                 "--config.data.task_mix.understanding=1.0", "--config.data.num_examples=24",
                 "--config.data.blank_fraction=0.0", "--config.data.degraded_fraction=0.5",
                 "--config.model.vq.image_size=16", "--config.data.seq_len=192"]
    config = load_config("sft:tiny", overrides)
    mc = sft.model_config_for(config, tok)
    params = janus.init_params(mc, jax.random.PRNGKey(0))
    with pytest.raises(UserError, match="init_checkpoint"):
        sft_data.build_dataset(config, tok, mc, params["vqmodel"])
    ckpt_lib.save_checkpoint(tmp_path / "policy", params, mc, tok)
    config.init_checkpoint = str(tmp_path / "policy")
    data = sft_data.build_dataset(config, tok, mc, params["vqmodel"])["understanding"]
    n = len(data["targets"])
    assert 24 + 6 <= n <= 24 + 18  # ~half of the 24 records add a degraded row
    answers = [tok.decode(t[k == sft_rows.KIND_ANSWER][:-1]).strip()
               for t, k in zip(data["targets"], data["target_kind"])]
    assert answers.count(judge_data.DEGRADED_ANSWER) == n - 24
    assert all(a != judge_data.DEGRADED_ANSWER for a in answers[:24])
