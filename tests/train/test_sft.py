"""SFT: sequence layout and loss weights, prompt dropout, config errors, and a tiny end-to-end
run (VQ tokenizer -> SFT -> exported checkpoint, understanding rows included)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from jaxgen import checkpoint as ckpt_lib
from jaxgen import cpu_devices, demo
from jaxgen.config import load_config
from jaxgen.data import judge as judge_data
from jaxgen.data import tokenizer as tok_lib
from jaxgen.data.build import tokenizer_corpus
from jaxgen.data.images import images_to_codes
from jaxgen.data.reasoning import parse_plan
from jaxgen.errors import UserError
from jaxgen.eval import geneval
from jaxgen.models import janus
from jaxgen.models.config import ConfigError
from jaxgen.train import losses, sft, sft_data, sft_loss, sft_rows
from jaxgen.train import vq as vq_lib


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The ShapesWorld tokenizer (jaxgen.data.tokenizer) built from procedural tiny records."""
    recs = (sft_data.procedural_records(48, 0, "train", 64)
            + sft_data.procedural_records(16, 1, "test", 64))
    corpus = (tokenizer_corpus(recs) + [judge_data.judge_question(r["prompt"]) for r in recs]
              + ["yes no"])
    out = tmp_path_factory.mktemp("tok")
    tok_lib.build_tokenizer(corpus, out, vocab_size=256)
    return tok_lib.load_tokenizer(out), out


@pytest.fixture(scope="module")
def tiny(tokenizer):
    config = load_config("sft:tiny")
    mc = sft.model_config_for(config, tokenizer[0])
    return config, mc


def test_generation_row_layout_and_kinds(tokenizer, tiny):
    tok, _ = tokenizer
    config, mc = tiny
    n = mc.num_image_tokens
    codes = np.arange(n) % mc.vq.num_embeddings
    row = sft_rows.generation_row(tok, mc, "a red circle", "a red circle", codes, 128, config.loss)
    prompt_len = len(tok("<bos><|User|>: a red circle\n\n<|Assistant|>:",
                         add_special_tokens=False)["input_ids"])
    reason_len = len(tok("a red circle", add_special_tokens=False)["input_ids"])
    length = prompt_len + reason_len + 1 + n + 1
    kind = row["target_kind"]
    # target t = token t + 1: prompt -> no loss, reasoning -> text, then boi, codes, eoi.
    assert (kind[:prompt_len - 1] == sft_rows.KIND_NONE).all()
    assert (kind[prompt_len - 1:prompt_len - 1 + reason_len] == sft_rows.KIND_TEXT).all()
    boi_at = prompt_len + reason_len - 1
    assert kind[boi_at] == sft_rows.KIND_BOI and row["targets"][boi_at] == mc.boi_token_id
    assert (kind[boi_at + 1:boi_at + 1 + n] == sft_rows.KIND_IMAGE).all()
    np.testing.assert_array_equal(row["targets"][boi_at + 1:boi_at + 1 + n], codes)
    assert row["target_is_image"][boi_at + 1:boi_at + 1 + n].all()
    assert kind[boi_at + 1 + n] == sft_rows.KIND_EOI
    assert row["valid"].sum() == length - 1 and not kind[length - 1:].any()
    # inputs = tokens shifted: the codes are inputs right after <begin_of_image>.
    assert row["inputs"][boi_at + 1] == mc.boi_token_id
    assert row["input_is_image"][boi_at + 2:boi_at + 2 + n].all()
    # dropout regions: BOS visible (0), prompt (1), reasoning (2)
    assert row["region"][0] == 0 and (row["region"][1:prompt_len] == 1).all()
    assert (row["region"][prompt_len:prompt_len + reason_len] == 2).all()


def test_too_long_sequence_is_a_clear_error(tokenizer, tiny):
    tok, _ = tokenizer
    config, mc = tiny
    with pytest.raises(UserError, match="raise --config.data.seq_len"):
        sft_rows.generation_row(tok, mc, "a red circle", "", np.zeros(mc.num_image_tokens, int), 16,
                                config.loss)


def _batch(tok, mc, config, n_rows=2):
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n_rows):
        codes = rng.integers(0, mc.vq.num_embeddings, mc.num_image_tokens)
        rows.append(sft_rows.generation_row(tok, mc, "a red circle", "a large red circle", codes,
                                            int(config.data.seq_len), config.loss))
    return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}


def test_loss_uses_text_image_boi_weights(tokenizer, tiny):
    tok, _ = tokenizer
    config, mc = tiny
    config = load_config("sft:tiny", ["--config.data.prompt_dropout=0.0"])
    params = janus.init_params(mc, jax.random.PRNGKey(0))
    batch = _batch(tok, mc, config)
    text_lg, img_lg = sft_loss.forward_logits(params, mc, batch)
    nll = np.where(batch["target_is_image"], losses.token_nll(img_lg, batch["targets"]),
                   losses.token_nll(text_lg, batch["targets"]))
    kind = np.asarray(batch["target_kind"])
    w = np.select([kind == sft_rows.KIND_TEXT, kind == sft_rows.KIND_IMAGE], [2.0, 1.0], 0.0)
    expected = (nll * w).sum() / w.sum()
    num, aux = sft_loss.make_loss_fn(mc, config)(params, batch, jax.random.PRNGKey(1))
    assert float(num / aux["denominator"]) == pytest.approx(expected, rel=1e-5)
    n, d = aux["metrics"]["image_loss"]
    assert float(n / d) == pytest.approx(nll[kind == sft_rows.KIND_IMAGE].mean(), rel=1e-5)
    # <begin_of_image> weight 0 by default; giving it weight changes the loss accordingly.
    cfg2 = load_config("sft:tiny", ["--config.data.prompt_dropout=0.0",
                                    "--config.loss.boi_weight=1.0"])
    w2 = w + (kind == sft_rows.KIND_BOI)
    num2, aux2 = sft_loss.make_loss_fn(mc, cfg2)(params, batch, jax.random.PRNGKey(1))
    assert float(num2 / aux2["denominator"]) == pytest.approx((nll * w2).sum() / w2.sum(), rel=1e-5)


def _random_code_rows(tok, mc, config, seq_len, seed, pairs) -> dict:
    """Generation rows (stacked arrays) for (prompt, reasoning) pairs with random image codes."""
    rng = np.random.default_rng(seed)
    rows = [sft_rows.generation_row(tok, mc, p, r, rng.integers(0, mc.vq.num_embeddings,
                                                                mc.num_image_tokens),
                                    seq_len, config.loss) for p, r in pairs]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_heads_at_gathered_targets_give_the_full_loss_and_gradient(tokenizer, tiny):
    """Evaluating lm_head / the image head only at their gathered target positions
    (head_capacities) gives the loss, every metric and the gradient of evaluating both heads
    everywhere; rows differ in their number of text targets, prompt dropout is on."""
    tok, _ = tokenizer
    _, mc = tiny
    config = load_config("sft:tiny", ["--config.data.prompt_dropout=0.5",
                                      "--config.loss.boi_weight=0.5"])
    rows = _random_code_rows(tok, mc, config, int(config.data.seq_len), seed=3, pairs=(
        ("a red circle", "a large red circle left of a blue square"), ("a cube", ""),
        ("two green squares", "a small green square"), ("a blue triangle", "a blue triangle")))
    batch = {k: jnp.asarray(v) for k, v in rows.items()}
    caps = sft_loss.head_capacities([{k: np.asarray(v) for k, v in batch.items()}])
    n_text = int(np.isin(np.asarray(batch["target_kind"]), sft_loss.TEXT_HEAD_KINDS).sum(1).max())
    assert caps == {"text": -(-n_text // 8) * 8, "image": mc.num_image_tokens}
    assert caps["text"] < batch["inputs"].shape[1]
    params = janus.init_params(mc, jax.random.PRNGKey(0))

    def run(capacities):
        loss_fn = sft_loss.make_loss_fn(mc, config, capacities)
        (num, aux), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
            params, batch, jax.random.PRNGKey(1))
        return num, aux, grads

    num_f, aux_f, g_f = run(None)
    num_g, aux_g, g_g = run(caps)
    assert float(aux_g["denominator"]) == float(aux_f["denominator"])
    assert float(num_g) == pytest.approx(float(num_f), rel=1e-6)
    for name, (n, d) in aux_f["metrics"].items():
        n2, d2 = aux_g["metrics"][name]
        assert float(d2) == float(d), name
        assert float(n2) == pytest.approx(float(n), rel=1e-5, abs=1e-6), name
    for a, b in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_g)):  # float32, sums reordered:
        a, b = np.asarray(a), np.asarray(b)                        # 1e-6 of each tensor's scale
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * np.abs(a).max() + 1e-12)


def test_prompt_dropout_hides_prompt_keeps_bos(tokenizer, tiny):
    tok, _ = tokenizer
    _, mc = tiny
    config = load_config("sft:tiny")
    batch = _batch(tok, mc, config)
    out, dropped = sft_loss.apply_prompt_dropout(batch, jax.random.PRNGKey(0), mc, 1.0, "prompt")
    valid = np.asarray(batch["valid"])
    assert np.asarray(dropped)[valid].all() and not np.asarray(dropped)[~valid].any()
    region = np.asarray(batch["region"])
    assert (np.asarray(out["inputs"])[region == 1] == mc.pad_token_id).all()
    np.testing.assert_array_equal(np.asarray(out["inputs"])[region != 1],
                                  np.asarray(batch["inputs"])[region != 1])
    assert (np.asarray(out["inputs"])[:, 0] == mc.bos_token_id).all()
    both, _ = sft_loss.apply_prompt_dropout(batch, jax.random.PRNGKey(0), mc, 1.0,
                                            "prompt_and_reasoning")
    assert (np.asarray(both["inputs"])[region >= 1] == mc.pad_token_id).all()
    none, dropped0 = sft_loss.apply_prompt_dropout(batch, jax.random.PRNGKey(0), mc, 0.0, "prompt")
    assert not np.asarray(dropped0).any()
    # Dropped rows carry no text loss: only image tokens train the unconditional branch.
    cfg1 = load_config("sft:tiny", ["--config.data.prompt_dropout=1.0"])
    params = janus.init_params(mc, jax.random.PRNGKey(0))
    _, aux = sft_loss.make_loss_fn(mc, cfg1)(params, batch, jax.random.PRNGKey(1))
    n_img = int((np.asarray(batch["target_kind"]) == sft_rows.KIND_IMAGE).sum())
    assert float(aux["denominator"]) == pytest.approx(n_img * 1.0)


@pytest.mark.parametrize("image_positions", [False, True])
def test_packed_rows_give_the_unpacked_logits_and_loss(tokenizer, tiny, image_positions):
    """Sequences packed into one row (segment ids, positions from 0) see only themselves: each
    one's logits equal its own unpacked row's, so the weighted loss is unchanged. With
    image_position_embeddings each packed image's codes keep their grid indices 0..n-1."""
    tok, _ = tokenizer
    _, mc = tiny
    mc = mc.replace(image_position_embeddings=image_positions)
    config = load_config("sft:tiny", ["--config.data.prompt_dropout=0.0",
                                      "--config.loss.boi_weight=1.0"])
    unpacked = _random_code_rows(tok, mc, config, 160, seed=1, pairs=(
        ("a red circle", "a large red circle"), ("a cube", ""),
        ("two green squares", "a small green square left of one")))
    lengths = unpacked["valid"].sum(1)
    seq = int(lengths.sum()) + 3
    packed = sft_rows.pack_rows(unpacked, seq, seed=0, pad_id=mc.pad_token_id)
    assert packed["inputs"].shape == (1, seq)  # all three fit one row
    assert sorted(np.bincount(packed["segment"][0])[1:].tolist()) == sorted(lengths.tolist())
    assert (packed["inputs"][0, -3:] == mc.pad_token_id).all()
    params = janus.init_params(mc, jax.random.PRNGKey(0))
    to_jnp = lambda b: {k: jnp.asarray(v) for k, v in b.items()}  # noqa: E731
    if image_positions:
        # only grid index k has an embedding: the logits first change at the input of code k
        # (the sampler feeds code i at index i too; tests/sampling checks it against the scorer)
        k = 5
        one = jnp.zeros((mc.num_image_tokens, mc.text.hidden_size)).at[k].set(1.0)
        _, with_k = sft_loss.forward_logits({**params, "image_positions": {"embedding": one}}, mc,
                                            to_jnp(unpacked))
        _, without = sft_loss.forward_logits({**params, "image_positions": {"embedding": 0 * one}},
                                             mc, to_jnp(unpacked))
        changed = np.abs(np.asarray(with_k) - np.asarray(without)).max(-1) > 1e-6  # [B, L]
        for row in range(3):
            code_k = np.flatnonzero(unpacked["input_is_image"][row])[k]
            assert np.flatnonzero(changed[row])[0] == code_k
        # large enough to matter at float32 tolerance in the packing check below
        params["image_positions"] = {"embedding": jax.random.normal(
            jax.random.PRNGKey(4), (mc.num_image_tokens, mc.text.hidden_size))}
    text_u, img_u = sft_loss.forward_logits(params, mc, to_jnp(unpacked))
    text_p, img_p = sft_loss.forward_logits(params, mc, to_jnp(packed))
    for seg in range(1, 4):
        at = np.nonzero(packed["segment"][0] == seg)[0]
        i = int(np.nonzero((unpacked["inputs"][:, :len(at)] == packed["inputs"][0, at]).all(1)
                           & (lengths == len(at)))[0][0])
        np.testing.assert_allclose(np.asarray(text_p[0, at]), np.asarray(text_u[i, :len(at)]),
                                   atol=2e-5)
        np.testing.assert_allclose(np.asarray(img_p[0, at]), np.asarray(img_u[i, :len(at)]),
                                   atol=2e-5)
    loss_fn = sft_loss.make_loss_fn(mc, config)
    nu, au = loss_fn(params, to_jnp(unpacked), jax.random.PRNGKey(1))
    npk, ap = loss_fn(params, to_jnp(packed), jax.random.PRNGKey(1))
    assert float(ap["denominator"]) == pytest.approx(float(au["denominator"]))
    assert float(npk / ap["denominator"]) == pytest.approx(float(nu / au["denominator"]), rel=1e-5)


def test_prompt_dropout_is_per_packed_sequence(tokenizer, tiny):
    tok, _ = tokenizer
    _, mc = tiny
    config = load_config("sft:tiny")
    rows = [sft_rows.generation_row(tok, mc, "a red circle", "a large red circle",
                                    np.zeros(mc.num_image_tokens, int), 160, config.loss)
            for _ in range(8)]
    unpacked = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    packed = sft_rows.pack_rows(unpacked, 4 * int(unpacked["valid"][0].sum()), 0, mc.pad_token_id)
    batch = {k: jnp.asarray(v) for k, v in packed.items()}
    _, dropped = sft_loss.apply_prompt_dropout(batch, jax.random.PRNGKey(3), mc, 0.5, "prompt")
    dropped, seg = np.asarray(dropped), packed["segment"]
    per_seq = [set(dropped[r][seg[r] == k].tolist()) for r in range(len(seg))
               for k in range(1, seg[r].max() + 1)]
    assert all(len(s) == 1 for s in per_seq)  # one decision per sequence
    assert {True, False} <= set().union(*per_seq)  # and they differ across sequences


def test_unknown_config_key_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown config key 'optim.lerning_rate'"):
        load_config("sft:tiny", ["--config.optim.lerning_rate=1e-3"])
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config("vq:tiny", ["--config.loss.l3_weight=1"])


def test_tiny_vq_then_sft_end_to_end(tokenizer, tmp_path):
    """VQ tokenizer trains, exports; SFT with generation + understanding rows trains, resumes
    as a no-op when finished, and writes a loadable jaxgen checkpoint."""
    tok, tok_dir = tokenizer
    vq_cfg = load_config("vq:tiny", ["--config.total_steps=3", "--config.data.heldout_size=4",
                                     "--config.train.ckpt_every=3"])
    vq_out = vq_lib.train(vq_cfg, tmp_path / "vq")
    assert vq_out["status"] == "done" and vq_out["step"] == 3
    assert 0 < vq_out["codebook_usage"] <= 1 and np.isfinite(vq_out["psnr"])
    rows = [json.loads(x) for x in (tmp_path / "vq" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3]
    assert (tmp_path / "vq" / "samples").is_dir()

    overrides = [f"--config.data.tokenizer={tok_dir}",
                 f"--config.data.vq_params={vq_out['params_path']}",
                 "--config.data.num_examples=8", "--config.batch_size=4",
                 "--config.total_steps=4", "--config.data.task_mix.understanding=0.5",
                 "--config.model.vq.image_size=16", "--config.data.seq_len=192"]
    cfg = load_config("sft:tiny", overrides)
    out = sft.train(cfg, tmp_path / "sft")
    assert out["status"] == "done" and out["step"] == 4
    assert np.isfinite(out["metrics"]["loss"]) and out["metrics"]["answer_loss"] > 0
    assert out["metrics"]["image_loss"] > 0
    assert (tmp_path / "sft" / "sft_cache.npz").exists()
    ckpt = tmp_path / "sft" / "final"
    assert (ckpt / "config.json").exists() and (ckpt / "params.safetensors").exists()
    # The tokenizer stayed frozen: exported VQ weights equal the trained tokenizer.
    exported = load_file(str(ckpt / "params.safetensors"))
    vq_trained = load_file(vq_out["params_path"])
    k = next(iter(vq_trained))
    np.testing.assert_array_equal(exported[f"vqmodel/{k}"], vq_trained[k])
    again = sft.train(cfg, tmp_path / "sft")  # resumes at the end: nothing left to do
    assert again["step"] == 4

    # The demo's SFT stage on a CPU host: a child process with two CPU devices, data-parallel;
    # the same first step to float32 rounding (later steps drift apart in rounding only).
    if cpu_devices.cpu_split_applies(2):
        cfg.total_steps = 1
        cfg.train.log_every = 1
        cfg.mesh = load_config("configs/demo.py").sft.mesh
        here = sft.train(cfg, tmp_path / "sft_here")
        config = ml_collections.ConfigDict(dict(cpu_devices=dict(sft=2)))
        child = demo._train(config, "sft", "jaxgen.train.sft:train", cfg, tmp_path / "sft_child")
        assert child["cpu_devices"] == 2 and child["step"] == 1
        np.testing.assert_allclose(child["metrics"]["loss"], here["metrics"]["loss"], rtol=1e-5)


def test_images_to_codes_keeps_the_order_whatever_the_threads():
    encode = jax.jit(lambda x: jnp.sum(x, axis=(1, 2, 3)).astype(jnp.int32)[:, None])
    images = np.random.default_rng(0).integers(0, 256, (70, 4, 4, 3), dtype=np.uint8)
    one = images_to_codes(encode, images, batch=8, threads=1)
    assert one.shape == (70, 1) and one.dtype == np.int32
    np.testing.assert_array_equal(images_to_codes(encode, images, batch=8, threads=3), one)
    expected = np.sum(images.astype(np.float32) / 127.5 - 1.0, axis=(1, 2, 3)).astype(np.int32)
    np.testing.assert_array_equal(one[:, 0], expected)


def test_generation_embeddings_start_at_the_vq_codebook(tiny):
    """init_generation_embeddings='codebook': row c of the image-input embedding is codebook row
    c, l2-normalised and scaled to sqrt(embed_dim) (the N(0, 1) init's expected norm)."""
    _, mc = tiny
    vq_params = janus.init_params(mc, jax.random.PRNGKey(3))["vqmodel"]
    params = sft.init_model_params(mc, jax.random.PRNGKey(0), vq_params, "codebook")
    emb = np.asarray(params["generation_embeddings"]["embedding"])
    cb = np.asarray(vq_params["codebook"])
    assert emb.shape == cb.shape == (mc.vq.num_embeddings, mc.vq.embed_dim)
    want = cb / np.linalg.norm(cb, axis=1, keepdims=True) * np.sqrt(mc.vq.embed_dim)
    np.testing.assert_allclose(emb, want, rtol=1e-6, atol=1e-6)
    random_init = sft.init_model_params(mc, jax.random.PRNGKey(0), vq_params)
    assert not np.allclose(np.asarray(random_init["generation_embeddings"]["embedding"]), emb)
    with pytest.raises(UserError, match="init_generation_embeddings"):
        sft.init_model_params(mc, jax.random.PRNGKey(0), vq_params, "kmeans")
    with pytest.raises(UserError, match="vq_params"):
        sft.init_model_params(mc, jax.random.PRNGKey(0), None, "codebook")


def test_init_checkpoint_with_fresh_parts(tokenizer, tiny, tmp_path):
    """A judge with another vision tower (conv stem) starts from the policy checkpoint: every part
    but the listed fresh ones comes from the checkpoint, those from the fresh init; a shape
    difference outside them, or an unknown part name, is a clear error."""
    _, mc = tiny
    policy = janus.init_params(mc, jax.random.PRNGKey(1))
    ckpt_lib.save_checkpoint(tmp_path / "policy", policy, mc, tokenizer[0])
    conv = mc.replace(vision=dataclasses.replace(mc.vision, stem="conv"))
    vq_params = policy["vqmodel"]
    fresh_fn = lambda r: sft.init_model_params(conv, r, vq_params)  # noqa: E731
    with pytest.raises(UserError, match="init_fresh_parts"):
        sft.checkpoint_init_fn(tmp_path / "policy", conv, vq_params)
    with pytest.raises(UserError, match="visual_model"):
        sft.checkpoint_init_fn(tmp_path / "policy", conv, vq_params, ("visual_model",), fresh_fn)
    init = sft.checkpoint_init_fn(tmp_path / "policy", conv, vq_params, ("vision_model",),
                                  fresh_fn)
    got = init(jax.random.PRNGKey(7))
    fresh = fresh_fn(jax.random.PRNGKey(7))
    assert "stem_0" in got["vision_model"]["embeddings"]
    for part in got:
        want = fresh[part] if part == "vision_model" else policy[part]
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                     got[part], want)


def test_describe_task_rows(tokenizer, tiny):
    """data.judge_task='describe': one row per record whose answer is the record's prompt; a
    blank_fraction of the rows show the blank image; an unknown task is a clear error."""
    tok, _ = tokenizer
    config, mc = tiny
    recs = sft_data.procedural_records(200, 0, "train", 16)
    rows = judge_data.describe_examples(recs, np.random.default_rng(0), blank_fraction=0.25)
    assert len(rows) == len(recs)
    assert all(r["answer"] == rec["prompt"] and r["question"] == judge_data.DESCRIBE_QUESTION
               for r, rec in zip(rows, recs))
    blank = [r for r in rows if r["perturbation"] == "blank"]
    assert 0.15 < len(blank) / len(rows) < 0.35
    assert all((r["image"] == judge_data.BLANK_GREY).all() for r in blank)
    shown = [r for r, rec in zip(rows, recs) if r["perturbation"] == "describe"]
    assert all(r["image"] is not None and (r["image"] != judge_data.BLANK_GREY).any() for r in shown)
    # the answer tokens of a built row spell the prompt, then <eos>
    row = sft_rows.understanding_row(tok, mc, rows[0]["question"], rows[0]["answer"], 192)
    ans = row["targets"][row["target_kind"] == sft_rows.KIND_ANSWER]
    assert tok.decode(ans[:-1]).strip() == recs[0]["prompt"] and ans[-1] == mc.eos_token_id
    bad = load_config("sft:tiny", ["--config.data.judge_task=rank",
                                   "--config.data.task_mix.understanding=1.0"])
    vq_params = janus.init_params(mc, jax.random.PRNGKey(0))["vqmodel"]
    with pytest.raises(UserError, match="judge_task"):
        sft_data.build_dataset(bad, tok, mc, vq_params)
    for key in ("degraded_fraction", "corrupted_fraction"):  # not for yes/no rows
        bad = load_config("sft:tiny", [f"--config.data.{key}=0.5", "--config.data.judge_task=yes_no",
                                       "--config.data.task_mix.understanding=1.0"])
        with pytest.raises(UserError, match=f"data.{key} needs data.judge_task"):
            sft_data.build_dataset(bad, tok, mc, vq_params)


def test_crop_task_rows_through_the_vq(tokenizer, tiny):
    """data.judge_task='crop': one row per planned object (plus the empty crops), each answer
    the object's name or "Malformed drawing." / "Nothing."; with understanding_images='vq' the
    whole scenes go through the tokenizer before cropping (the pixels differ from 'rendered')."""
    tok, _ = tokenizer
    config, mc = tiny
    vq_params = janus.init_params(mc, jax.random.PRNGKey(0))["vqmodel"]
    base = ["--config.data.judge_task=crop", "--config.data.task_mix.generation=0.0",
            "--config.data.task_mix.understanding=1.0", "--config.data.num_examples=12",
            "--config.data.seq_len=192", "--config.data.corrupted_fraction=0.3",
            "--config.data.empty_fraction=0.5"]
    config = load_config("sft:tiny", base)
    recs = sft_data.load_records(config, "train", 12, int(config.data.seed))
    objects = sum(len(parse_plan(r["plan"]).objects) for r in recs)
    rows = judge_data.crop_examples(recs, np.random.default_rng(int(config.data.seed) + 1),
                                    16, 0.3, 0.5)
    und = sft_data.build_dataset(config, tok, mc, vq_params)["understanding"]
    assert len(und["inputs"]) == len(rows) and objects <= len(rows) <= objects + 12
    for row, want in zip(range(len(rows)), rows):
        ans = und["targets"][row][und["target_kind"][row] == sft_rows.KIND_ANSWER]
        assert list(ans[:-1]) == sft_rows.encode_text(tok, want["answer"])
    assert {judge_data.DEGRADED_ANSWER, judge_data.EMPTY_ANSWER} <= {r["answer"] for r in rows}
    vq = sft_data.build_dataset(load_config("sft:tiny", base + [
        "--config.data.understanding_images=vq"]), tok, mc, vq_params)["understanding"]
    np.testing.assert_array_equal(vq["targets"], und["targets"])
    assert not np.array_equal(vq["pixels"], und["pixels"])


def test_corrupted_fraction_adds_malformed_describe_rows(tokenizer, tiny):
    """data.corrupted_fraction: the describe dataset gains renderer-corrupted rows whose answer
    is "Malformed drawing." (about the fraction of the records), the rest unchanged."""
    tok, _ = tokenizer
    config, mc = tiny
    vq_params = janus.init_params(mc, jax.random.PRNGKey(0))["vqmodel"]
    base = ["--config.data.judge_task=describe", "--config.data.task_mix.generation=0.0",
            "--config.data.task_mix.understanding=1.0", "--config.data.num_examples=40",
            "--config.data.blank_fraction=0.0", "--config.data.seq_len=192"]
    plain = sft_data.build_dataset(load_config("sft:tiny", base), tok, mc,
                                   vq_params)["understanding"]
    more = sft_data.build_dataset(
        load_config("sft:tiny", base + ["--config.data.corrupted_fraction=0.5"]), tok, mc,
        vq_params)["understanding"]
    extra = len(more["inputs"]) - len(plain["inputs"])
    assert 10 <= extra <= 30  # ~20 of 40 records
    np.testing.assert_array_equal(more["inputs"][:len(plain["inputs"])], plain["inputs"])
    malformed = sft_rows.encode_text(tok, judge_data.DEGRADED_ANSWER)
    for row in range(len(plain["inputs"]), len(more["inputs"])):
        ans = more["targets"][row][more["target_kind"][row] == sft_rows.KIND_ANSWER]
        assert list(ans[:-1]) == malformed and ans[-1] == mc.eos_token_id


def test_sft_on_reasongen_jsonl_from_a_model_checkpoint(tokenizer, tmp_path):
    """data.source='reasongen_jsonl': records from a ReasonGen-R1 style JSONL (brief caption,
    detailed caption, image file), tokenizer and VQ from init_checkpoint (a real model's layout
    after `jaxgen convert hf-to-jax`); rows hold prompt -> caption -> <boi> -> the image's codes
    under the checkpoint's VQ; the run trains and exports."""
    tok, _ = tokenizer
    cfg = load_config("sft:tiny", ["--config.data.source=reasongen_jsonl",
                                   "--config.data.reasoning=caption", "--config.data.canvas=16",
                                   "--config.model.vq.image_size=16", "--config.batch_size=4",
                                   "--config.total_steps=3", "--config.data.num_examples=6",
                                   "--config.data.seq_len=128"])
    mc = sft.model_config_for(cfg, tok)
    params = janus.init_params(mc, jax.random.PRNGKey(4))
    ckpt_lib.save_checkpoint(tmp_path / "model", params, mc, tok)
    # an imported Hugging Face model's processor settings travel to the SFT'd export
    (tmp_path / "model" / "processor_config.json").write_text('{"num_image_tokens": 16}')
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    lines = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            tmp_path / "images" / f"{i}.png")
        lines.append(json.dumps({"brief_caption": "a red circle",
                                 "detailed_caption": "a red circle on the left of a blue square",
                                 "image": f"{i}.png"}))
    (tmp_path / "sft.jsonl").write_text("\n".join(lines) + "\n")
    cfg.data.path = str(tmp_path / "sft.jsonl")
    cfg.data.image_root = str(tmp_path / "images")
    cfg.init_checkpoint = str(tmp_path / "model")

    data = sft_data.build_dataset(cfg, tok, mc, params["vqmodel"])["generation"]
    assert len(data["inputs"]) == 6
    caption = tok.encode("a red circle on the left of a blue square", add_special_tokens=False)
    text = [int(t) for t in data["inputs"][0]]
    assert any(text[j:j + len(caption)] == caption for j in range(len(text)))
    image = np.asarray(Image.open(tmp_path / "images" / "0.png"), np.float32) / 127.5 - 1.0
    codes = np.asarray(janus.vq_encode({"vqmodel": params["vqmodel"]}, mc, image[None]))[0]
    targets = data["targets"][0][data["target_kind"][0] == sft_rows.KIND_IMAGE]
    np.testing.assert_array_equal(targets, codes)

    out = sft.train(cfg, tmp_path / "run")  # tokenizer and VQ from init_checkpoint
    assert out["status"] == "done" and np.isfinite(out["metrics"]["loss"])
    assert out["metrics"]["image_loss"] > 0
    exported, _, _ = ckpt_lib.load_checkpoint(tmp_path / "run" / "final")
    assert (tmp_path / "run" / "final" / "processor_config.json").read_text() == (
        '{"num_image_tokens": 16}')
    np.testing.assert_array_equal(np.asarray(exported["vqmodel"]["codebook"]),
                                  np.asarray(params["vqmodel"]["codebook"]))

    cfg.data.task_mix.understanding = 0.5
    with pytest.raises(UserError, match="task_mix.understanding=0"):
        sft_data.build_dataset(cfg, tok, mc, params["vqmodel"])
    cfg.data.task_mix.understanding = 0.0
    cfg.data.path = ""
    with pytest.raises(UserError, match="needs --config.data.path"):
        sft_data.load_records(cfg, "train", 4, 0)
    cfg.data.source = "laion"
    with pytest.raises(UserError, match="unknown data.source 'laion'"):
        sft_data.load_records(cfg, "train", 4, 0)


def test_janus_pro_sft_variants():
    for size, hidden in (("1b", 2048), ("7b", 4096)):
        c = load_config(f"sft:janus_pro_{size}")
        assert c.model.text.hidden_size == hidden and c.data.source == "reasongen_jsonl"
        assert (c.loss.text_weight, c.loss.image_weight, c.loss.boi_weight) == (2.0, 1.0, 0.0)
        assert c.optim.learning_rate == 2e-5 and c.data.reasoning == "caption"
        assert c.data.seq_len >= 576 + 64  # 24 x 24 image codes plus prompt and caption


def test_generation_accuracy_scores_its_own_samples(tokenizer, tiny):
    """The held-out evaluation samples one image per prompt (left-padded prompts in batches) and
    its accuracy is the evaluator's verdict on exactly those images; reruns are identical."""
    tok, _ = tokenizer
    config, mc = tiny
    params = janus.init_params(mc, jax.random.PRNGKey(3))
    options = sft.sample_options(config)
    out = sft.generation_accuracy(params, mc, tok, 5, 7, options, batch_size=2)
    assert out["images"].shape == (5, mc.vq.image_size, mc.vq.image_size, 3)
    metas = sft_data.heldout_metadata(5, 7, "test", mc.vq.image_size)
    verdicts = [bool(geneval.score(img, m)["correct"]) for img, m in zip(out["images"], metas)]
    assert out["accuracy"] == float(np.mean(verdicts))
    again = sft.generation_accuracy(params, mc, tok, 5, 7, options, batch_size=2)
    np.testing.assert_array_equal(again["images"], out["images"])
    # a batch of one prompt (no padding) draws the same image as inside a padded batch
    alone = sft.generation_accuracy(params, mc, tok, 1, 7, options, batch_size=1)
    np.testing.assert_array_equal(alone["images"][0], out["images"][0])
