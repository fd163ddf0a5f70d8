"""Fixtures of the training tests."""

import pytest

from tests.helpers import rl_test_setup


@pytest.fixture(scope="module")
def policy():
    """(params, JanusConfig, tokenizer) of the random tiny GRPO policy (rl_test_setup)."""
    return rl_test_setup.grpo_policy()
