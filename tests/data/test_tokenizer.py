"""ShapesWorld tokenizer: exact round trips, special tokens, transformers loading."""

import numpy as np
import pytest

from jaxgen.data import build, prompts, reasoning, templates, tokenizer as T
from jaxgen.data.prompts import CATEGORIES
from jaxgen.errors import UserError


@pytest.fixture(scope="module")
def corpus_and_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    texts = []
    for i in range(300):
        split = "train" if i % 2 else "test"
        prompt, meta, scene = prompts.sample_prompt(rng, split, CATEGORIES[i % len(CATEGORIES)])
        texts += [prompt, reasoning.layout_plan(scene), reasoning.detailed_caption(scene, meta)]
    out = tmp_path_factory.mktemp("tok")
    T.build_tokenizer(build.tokenizer_corpus([{"prompt": t} for t in texts]), out)
    return texts, out


def test_loads_with_auto_tokenizer_and_fast_class(corpus_and_dir):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    _, out = corpus_and_dir
    assert (out / "tokenizer.json").exists()
    auto = AutoTokenizer.from_pretrained(str(out))
    fast = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    s = "a photo of a red circle"
    assert auto.encode(s, add_special_tokens=False) == fast.encode(s, add_special_tokens=False)
    assert len(auto) <= 600  # small vocabulary for the tiny model


def test_special_tokens(corpus_and_dir):
    _, out = corpus_and_dir
    tok = T.load_tokenizer(out)
    ids = T.special_token_ids(tok)
    assert set(ids) == {"bos_token_id", "eos_token_id", "pad_token_id", "boi_token_id",
                        "eoi_token_id", "image_token_id"}
    assert len(set(ids.values())) == 6
    for text in T.SPECIAL_TOKENS:
        enc = tok.encode(text, add_special_tokens=False)
        assert len(enc) == 1, text
    assert tok.pad_token == "<pad>" and tok.bos_token == "<bos>" and tok.eos_token == "<eos>"
    # loading the bare tokenizer.json gives the same ids
    assert T.special_token_ids(T.load_tokenizer(out / "tokenizer.json")) == ids


def test_every_generated_string_round_trips(corpus_and_dir):
    texts, out = corpus_and_dir
    tok = T.load_tokenizer(out)
    rng = np.random.default_rng(1)
    # fresh strings (not in the training corpus) plus full templated sequences
    fresh = []
    for i in range(200):
        prompt, meta, scene = prompts.sample_prompt(rng, "test" if i % 3 else "train")
        plan = reasoning.layout_plan(scene)
        cap = reasoning.detailed_caption(scene, meta)
        fresh += [prompt, plan, cap,
                  templates.generation_prompt(prompt, T.BOS) + plan + templates.BOI,
                  templates.generation_prompt(prompt, T.BOS) + cap + templates.BOI + T.EOS,
                  templates.understanding_prompt("Is there a " + prompt + "?", T.BOS, 4) + " yes"]
    bad = [s for s in texts + fresh if not T.round_trips(tok, s)]
    assert bad == []
    # strings the corpus never saw still round trip (byte-level)
    assert T.round_trips(tok, "Ünïcode  double  spaces\n\nand\ttabs 12345")


def test_plan_digits_are_single_tokens(corpus_and_dir):
    _, out = corpus_and_dir
    tok = T.load_tokenizer(out)
    pieces = tok.convert_ids_to_tokens(tok.encode("<box>(125,562),(484,922)</box>",
                                                  add_special_tokens=False))
    assert [p for p in pieces if p.isdigit()] == list("125562484922")


def test_missing_tokenizer_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no tokenizer"):
        T.load_tokenizer(tmp_path)
