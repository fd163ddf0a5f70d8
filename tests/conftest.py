"""Shared test fixtures.

`hf_tiny_dir`: a tiny random Hugging Face `JanusForConditionalGeneration` built OFFLINE (no hub),
saved with safetensors + config.json + generation_config.json + a tiny word-level tokenizer to a
temp dir made once per test run. Its shapes equal `configs/janus.py:tiny`, so
`import_hf_dir(hf_tiny_dir)` gives that config. `hf_tiny_model`: the same model loaded in PyTorch
(eval mode, float32). `tiny_janus`: a random `janus:tiny` model in jaxgen, once per test module.

The repository root is on sys.path (pyproject.toml: `pythonpath`), so the tests import their
helpers as `tests.helpers.<module>` and `third_party` as it is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid

import pytest

from third_party.hf_janus import save_random_hf_janus, tiny_janus_config

# One XLA compilation cache per test run, shared by the xdist workers and by the subprocesses the
# tests start (all inherit this environment): the suite compiles the same tiny programs many
# times over (a warm cache cuts a 2-iteration GRPO script from 44 s to 14 s). The cache is keyed
# on the program, its devices and the compiler flags, so no result changes. A run that sets
# JAX_COMPILATION_CACHE_DIR itself keeps its own.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = os.path.join(tempfile.gettempdir(), f"jaxgen-tests-xla-{uuid.uuid4().hex[:12]}")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


def pytest_configure(config):
    # float32 parity tolerances assume full-precision matmuls; GPUs default to TF32 (no effect
    # on CPU, where float32 matmuls are always full precision).
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    # Tiny models: one torch thread is faster than two fighting JAX's pool on the 2 shared cores.
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass


# The slowest modules (each over a minute, mostly subprocesses with fake devices or several
# processes) run first, so with `-n 2 --dist loadfile` (the README's command) neither worker is
# left running one of them alone at the end.
SLOW_FIRST = ("test_grpo_mesh.py", "test_flow_mesh.py", "test_multihost.py", "test_parallel.py",
              "test_flow_training.py", "test_sft.py", "test_rl_accumulation.py", "test_grpo.py",
              "test_cpu_devices.py", "test_rl_loop.py", "test_grpo_recipes.py",
              "test_hf_export.py", "test_bench.py")


def pytest_unconfigure(config):
    if _OWN_CACHE:  # the process that made the cache (the xdist controller) removes it
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable sort


@pytest.fixture(scope="session")
def hf_tiny_dir(tmp_path_factory):
    """Path of a saved tiny random HF Janus model (see module docstring)."""
    return save_random_hf_janus(tiny_janus_config(), tmp_path_factory.mktemp("hf_tiny_janus"))


@pytest.fixture(scope="session")
def hf_tiny_model(hf_tiny_dir):
    """The fixture model reloaded in PyTorch (float32, eval)."""
    import transformers
    return transformers.JanusForConditionalGeneration.from_pretrained(hf_tiny_dir).eval()


@pytest.fixture(scope="module")
def tiny_janus():
    """(JanusConfig, params) of a random `janus:tiny` model from PRNGKey(0)."""
    from tests.helpers import tiny_models  # imports jax: after the cache is set up above
    return tiny_models.tiny_janus()
