"""Fixtures of the sampler tests: the tiny HF fixture model imported into jaxgen once."""

import pytest


@pytest.fixture(scope="session")
def tiny_jax(hf_tiny_dir):
    """(params, config, tokenizer) of the conftest's tiny random HF Janus model."""
    from jaxgen.convert.hf import import_hf_dir
    return import_hf_dir(hf_tiny_dir)
