"""Model checkpoints a user passes around: jaxgen checkpoint directories, flow decoders, VQ params.

A jaxgen checkpoint directory holds
  config.json          JanusConfig.to_dict()
  params.safetensors   the params pytree flattened with '/'-joined keys (dtypes kept)
  tokenizer files      tokenizer.json, ... (optional)
  processor files      processor_config.json, ... of an imported Hugging Face directory
                       (optional, kept verbatim for the export back; PROCESSOR_FILES)
and, when it carries a flow decoder (the diffusion path),
  flow_config.json     FlowConfig.to_dict()
  flow.safetensors     the flow params, flattened the same way.
A trained VQ tokenizer alone is one flattened safetensors file (`vq_params.safetensors`).

Every load checks names and shapes against the config and turns a missing, truncated or
corrupted file into one CheckpointError naming the file and what to do.
"""

from __future__ import annotations

import pathlib
import shutil

import jax
import jax.numpy as jnp

from jaxgen import parallel
from jaxgen.checkpoint.files import (load_tree, read_json, save_tree, shape_problems, write_json)
from jaxgen.data.tokenizer import load_tokenizer
from jaxgen.errors import CheckpointError, UserError
from jaxgen.models import flow, janus
from jaxgen.models.config import JanusConfig

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"
TOKENIZER_FILE = "tokenizer.json"
FLOW_CONFIG_FILE = "flow_config.json"
FLOW_PARAMS_FILE = "flow.safetensors"
VQ_PARAMS_FILE = "vq_params.safetensors"
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "chat_template.jinja",
                   "chat_template.json")

_REEXPORT = ("re-export it from the run that wrote it (`jaxgen train ... --workdir W` writes "
             "W/final again from its newest training checkpoint) or copy it again")


def is_jaxgen_checkpoint(path) -> bool:
    return (pathlib.Path(path) / PARAMS_FILE).exists()


def copy_processor_files(src, dst) -> list[str]:
    """Copy the processor files (PROCESSOR_FILES) `src` has into `dst`; returns their names."""
    src, dst = pathlib.Path(src), pathlib.Path(dst)
    copied = []
    for name in PROCESSOR_FILES:
        if (src / name).is_file() and src.resolve() != dst.resolve():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


def save_checkpoint(ckpt_dir, params, config: JanusConfig, tokenizer=None,
                    processor_from=None) -> pathlib.Path:
    """Write config.json, params.safetensors and (if given) the tokenizer files into ckpt_dir;
    processor_from: a directory whose processor files travel along (the checkpoint a trained
    model started from)."""
    out = pathlib.Path(ckpt_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_FILE, config.to_dict())
    save_tree(out / PARAMS_FILE, params)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    if processor_from:
        copy_processor_files(processor_from, out)
    return out


def _check_shapes(got, expected, params_file: pathlib.Path, config_file: pathlib.Path):
    problems = shape_problems(got, expected)
    if problems:
        raise CheckpointError(f"{params_file} does not match {config_file}: " + "; ".join(problems)
                              + ". Re-save the checkpoint with the config it was trained with.")


def load_checkpoint(ckpt_dir):
    """Read a jaxgen checkpoint directory -> (params, config, tokenizer or None)."""
    path = pathlib.Path(ckpt_dir)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist; pass the directory "
                              f"written by `jaxgen convert hf-to-jax` or Generator.save")
    missing = [f for f in (CONFIG_FILE, PARAMS_FILE) if not (path / f).exists()]
    if missing:
        raise CheckpointError(f"{path} is not a jaxgen checkpoint: {missing} missing (expected "
                              f"{CONFIG_FILE} + {PARAMS_FILE} + tokenizer files)")
    try:
        config = JanusConfig.from_dict(read_json(path / CONFIG_FILE, _REEXPORT))
    except (UserError, TypeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path / CONFIG_FILE} is not a valid jaxgen model config: "
                              f"{e}") from None
    params = jax.tree.map(jnp.asarray, load_tree(path / PARAMS_FILE, _REEXPORT))
    expected = jax.eval_shape(lambda r: janus.init_params(config, r), jax.random.PRNGKey(0))
    _check_shapes(params, expected, path / PARAMS_FILE, path / CONFIG_FILE)
    tokenizer = load_tokenizer(str(path)) if (path / TOKENIZER_FILE).exists() else None
    return params, config, tokenizer


def save_flow_checkpoint(path, janus_params, jc, tokenizer, flow_params, fc) -> pathlib.Path:
    """The unified model's checkpoint directory plus the flow decoder's config and params."""
    out = save_checkpoint(path, janus_params, jc, tokenizer)
    save_tree(out / FLOW_PARAMS_FILE, flow_params)
    write_json(out / FLOW_CONFIG_FILE, fc.to_dict())
    return out


def load_flow_checkpoint(path):
    """-> (janus_params, JanusConfig, tokenizer, flow_params, FlowConfig)."""
    path = pathlib.Path(path)
    janus_params, jc, tokenizer = load_checkpoint(path)
    missing = [f for f in (FLOW_CONFIG_FILE, FLOW_PARAMS_FILE) if not (path / f).exists()]
    if missing:
        raise CheckpointError(f"{path} has no flow decoder ({missing} missing); train one with "
                              "`jaxgen train flow --config configs/flow.py:shapes "
                              f"--config.policy={path}` and pass its <workdir>/final")
    fc = flow.FlowConfig.from_dict(read_json(path / FLOW_CONFIG_FILE, _REEXPORT))
    flow_params = jax.tree.map(jnp.asarray, load_tree(path / FLOW_PARAMS_FILE, _REEXPORT))
    expected = jax.eval_shape(lambda r: flow.init_flow_params(fc, jc, r), jax.random.PRNGKey(0))
    _check_shapes(flow_params, expected, path / FLOW_PARAMS_FILE, path / FLOW_CONFIG_FILE)
    return janus_params, jc, tokenizer, flow_params, fc


def save_vq_params(path, vq_params) -> pathlib.Path:
    """A VQModel params tree as one flattened safetensors file."""
    return save_tree(path, vq_params)


def load_vq_params(path) -> dict:
    """Inverse of save_vq_params: nested dict of jnp arrays."""
    path = pathlib.Path(path)
    if not path.exists():
        raise UserError(f"VQ params {path} not found; run `jaxgen train vq --workdir W` first "
                        f"(it writes W/{VQ_PARAMS_FILE})")
    return jax.tree.map(jnp.asarray, load_tree(
        path, f"rerun `jaxgen train vq` (it rewrites W/{VQ_PARAMS_FILE})"))


def export_from_mesh(name: str, save, *trees):
    """Gather `trees` (sharded device arrays) to the host and call `save(*host_trees)` on process
    0 only, every host waiting until it is written (`name` labels the barrier). Every process
    must call it (a collective)."""
    host = parallel.to_host(trees)
    return parallel.primary_writes(lambda: save(*host), name)
