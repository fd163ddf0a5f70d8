"""Fixtures of the reward tests."""

import pytest

from jaxgen.sampling import understanding
from tests.helpers.tiny_tokenizer import make_tokenizer


@pytest.fixture(scope="module")
def tiny(tiny_janus):
    """(JanusConfig, params, tokenizer, VLMJudge) of the tiny random model judging its own
    images (questions up to 64 tokens)."""
    config, params = tiny_janus
    tok = make_tokenizer(config.text.vocab_size)
    return config, params, tok, understanding.VLMJudge(params, config, tok, max_text_tokens=64)
