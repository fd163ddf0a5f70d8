"""Hugging Face <-> jaxgen weights for the SigLIP vision tower and the VQ tokenizer.

Tensors are `name -> np.ndarray` dicts whose names carry NO 'model.vision_model.' /
'model.vqmodel.' prefix. Rules: Linear weight [out, in] <-> Dense kernel [in, out];
Conv2d weight OIHW <-> Conv kernel HWIO; norm weight <-> scale; Embedding weight <-> embedding
(VQ codebook: 'quantize.embedding.weight' <-> 'codebook'). Flax module names map to HF names by
`_hf_module_name` ('layers_3' -> 'layers.3', 'down_1_block_0' -> 'down.1.block.0').

The expected parameter layout comes from `jax.eval_shape` of the Flax module, so a checkpoint is
checked in full before anything is returned: missing, unexpected and wrong-shaped tensors raise
`jaxgen.errors.CheckpointError` naming them.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxgen.errors import CheckpointError
from jaxgen.models.config import VisionConfig, VQConfig
from jaxgen.models.vision import VisionTower
from jaxgen.models.vq import VQModel

_LEVEL_PART = re.compile(r"^(down|up)_(\d+)_(block|attn)_(\d+)$")
_SAMPLE_PART = re.compile(r"^(down|up)_(\d+)_(downsample|upsample)$")
_LAYER_PART = re.compile(r"^layers_(\d+)$")
_LEAF_TO_HF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
_SPECIAL_TO_HF = {("codebook",): "quantize.embedding.weight"}


def _hf_module_name(part: str) -> str:
    m = _LEVEL_PART.match(part)
    if m:
        return f"{m[1]}.{m[2]}.{m[3]}.{m[4]}"
    m = _SAMPLE_PART.match(part)
    if m:
        return f"{m[1]}.{m[2]}.{m[3]}"
    m = _LAYER_PART.match(part)
    if m:
        return f"layers.{m[1]}"
    return part


def _hf_name(path: Tuple[str, ...]) -> str:
    if path in _SPECIAL_TO_HF:
        return _SPECIAL_TO_HF[path]
    *modules, leaf = path
    return ".".join([_hf_module_name(p) for p in modules] + [_LEAF_TO_HF[leaf]])


def _to_hf_array(path, x: np.ndarray) -> np.ndarray:
    """jaxgen layout -> HF layout."""
    if path[-1] == "kernel" and x.ndim == 4:
        return np.transpose(x, (3, 2, 0, 1))  # HWIO -> OIHW
    if path[-1] == "kernel" and x.ndim == 2:
        return np.transpose(x)
    return x


def _from_hf_array(path, x: np.ndarray) -> np.ndarray:
    """HF layout -> jaxgen layout."""
    if path[-1] == "kernel" and x.ndim == 4:
        return np.transpose(x, (2, 3, 1, 0))  # OIHW -> HWIO
    if path[-1] == "kernel" and x.ndim == 2:
        return np.transpose(x)
    return x


def _hf_shape(path, shape) -> tuple:
    if path[-1] == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if path[-1] == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def _expected_shapes(init_fn: Callable) -> Dict[tuple, tuple]:
    shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
    shapes = nn.meta.unbox(shapes["params"])
    return {path: tuple(v.shape) for path, v in flatten_dict(shapes).items()}


def _from_hf(tensors: Mapping[str, np.ndarray], expected: Dict[tuple, tuple], what: str):
    by_hf = {_hf_name(path): path for path in expected}
    missing = sorted(set(by_hf) - set(tensors))
    unexpected = sorted(set(tensors) - set(by_hf))
    if missing:
        raise CheckpointError(f"{what}: missing tensor(s) {missing}; the checkpoint does not match "
                              "the config (check the model sizes in config.json).")
    if unexpected:
        raise CheckpointError(f"{what}: unexpected tensor(s) {unexpected}; the checkpoint does not "
                              "match the config (check the model sizes in config.json).")
    return unflatten_dict(checked_arrays(tensors, by_hf, expected, _hf_shape, _from_hf_array, what))


def checked_arrays(tensors, by_hf: dict, expected: dict, hf_shape: Callable, from_hf: Callable,
                   what: str) -> dict:
    """{jaxgen path: array in jaxgen's layout} for every `by_hf` (HF name -> path) tensor, each
    checked against the shape the config implies (`hf_shape(path, expected[path])`, HF layout)
    and converted by `from_hf(path, x)`; CheckpointError naming the first misshapen one."""
    flat = {}
    for hf_name, path in by_hf.items():
        x = np.asarray(tensors[hf_name])
        want = hf_shape(path, expected[path])
        if tuple(x.shape) != want:
            raise CheckpointError(
                f"{what}: tensor '{hf_name}' has shape {tuple(x.shape)} but the config expects "
                f"{want}; fix config.json (or the checkpoint) so they agree.")
        flat[path] = np.ascontiguousarray(from_hf(path, x))
    return flat


def _to_hf(params, expected: Dict[tuple, tuple], what: str) -> Dict[str, np.ndarray]:
    flat = flatten_dict(params)
    missing = sorted("/".join(p) for p in set(expected) - set(flat))
    unexpected = sorted("/".join(p) for p in set(flat) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{what}: params do not match the config: missing {missing}, "
                              f"unexpected {unexpected}.")
    out = {}
    for path, x in flat.items():
        x = np.asarray(x)
        if tuple(x.shape) != expected[path]:
            raise CheckpointError(f"{what}: param '{'/'.join(path)}' has shape {tuple(x.shape)} "
                                  f"but the config expects {expected[path]}.")
        out[_hf_name(path)] = np.ascontiguousarray(_to_hf_array(path, x))
    return out


def _vision_shapes(config: VisionConfig):
    x = jnp.zeros((1, config.image_size, config.image_size, config.num_channels), jnp.float32)
    return _expected_shapes(lambda r: VisionTower(config).init(r, x))


def _vq_shapes(config: VQConfig):
    x = jnp.zeros((1, config.image_size, config.image_size, config.in_channels), jnp.float32)
    return _expected_shapes(lambda r: VQModel(config).init(r, x))


def vision_from_hf(tensors: Mapping[str, np.ndarray], config: VisionConfig) -> dict:
    """HF JanusVisionModel tensors (no 'model.vision_model.' prefix) -> VisionTower params."""
    return _from_hf(tensors, _vision_shapes(config), "vision_model")


def vision_to_hf(params, config: VisionConfig) -> Dict[str, np.ndarray]:
    """VisionTower params -> HF JanusVisionModel tensors (no prefix)."""
    return _to_hf(params, _vision_shapes(config), "vision_model")


def vq_from_hf(tensors: Mapping[str, np.ndarray], config: VQConfig) -> dict:
    """HF JanusVQVAE tensors (no 'model.vqmodel.' prefix) -> VQModel params."""
    return _from_hf(tensors, _vq_shapes(config), "vqmodel")


def vq_to_hf(params, config: VQConfig) -> Dict[str, np.ndarray]:
    """VQModel params -> HF JanusVQVAE tensors (no prefix)."""
    return _to_hf(params, _vq_shapes(config), "vqmodel")
