"""Load any model directory a user names: a jaxgen checkpoint or a Hugging Face Janus directory."""

from __future__ import annotations

import json
import pathlib

from jaxgen.checkpoint import CONFIG_FILE, PARAMS_FILE, is_jaxgen_checkpoint, load_checkpoint
from jaxgen.convert.hf import import_hf_dir
from jaxgen.errors import CheckpointError, UserError


def _hf_model_type(path: pathlib.Path):
    try:
        return json.loads((path / CONFIG_FILE).read_text()).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def load_model(path, **import_options):
    """(params, JanusConfig, tokenizer or None) from a jaxgen checkpoint or a Hugging Face Janus
    directory. import_options (Hugging Face directories only) go to `import_hf_dir`, e.g.
    scan_layers=True, dtype='bfloat16'."""
    path = pathlib.Path(path)
    if not path.exists():
        raise CheckpointError(f"model path {path} does not exist; pass a jaxgen checkpoint "
                              f"directory or a Hugging Face Janus directory")
    if not path.is_dir():
        raise CheckpointError(f"model path {path} is a file; pass the directory that holds it")
    if is_jaxgen_checkpoint(path):
        if import_options:
            raise UserError(f"{sorted(import_options)} only apply when importing a Hugging Face "
                            f"directory; {path} is a jaxgen checkpoint (its config.json decides)")
        return load_checkpoint(path)
    model_type = _hf_model_type(path)
    if model_type == "janus":
        return import_hf_dir(str(path), **import_options)
    if model_type is not None:
        raise CheckpointError(f"{path} holds a Hugging Face {model_type!r} model, not Janus "
                              f"(model_type 'janus'); jaxgen loads Janus-Pro models only")
    raise CheckpointError(f"{path} is not a model directory: expected {CONFIG_FILE} + "
                          f"{PARAMS_FILE} (jaxgen checkpoint) or a Hugging Face Janus directory")
