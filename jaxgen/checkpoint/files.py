"""The file-level formats every checkpoint is made of: flattened safetensors and JSON.

A params pytree (nested dicts of arrays) is stored as one safetensors file whose keys are the
tree paths joined with '/'. Files are written atomically (a temporary file in the same folder,
then `os.replace`), so a crash mid-write leaves the previous file intact. A file that cannot be
read (truncated, corrupted, not safetensors) raises one `CheckpointError` naming it.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

import jax
import numpy as np

from jaxgen.errors import CheckpointError, UserError

KEY_SEP = "/"


def flatten(tree, prefix=()) -> dict:
    """Nested dicts -> {'a/b/c': leaf}."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            if KEY_SEP in str(k):
                raise UserError(f"parameter key {k!r} contains {KEY_SEP!r}; rename it to save")
            out.update(flatten(v, prefix + (str(k),)))
        return out
    return {KEY_SEP.join(prefix): tree}


def unflatten(flat: dict) -> dict:
    """{'a/b/c': leaf} -> nested dicts."""
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        parts = key.split(KEY_SEP)
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def atomic_write(path, write_to) -> pathlib.Path:
    """Call `write_to(tmp_path)` for a temporary file beside `path`, then rename it to `path`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_to(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_json(path, obj) -> pathlib.Path:
    return atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text(
        json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def read_json(path, fix: str) -> dict:
    """A JSON file's object; CheckpointError naming the file and `fix` when it is unreadable."""
    path = pathlib.Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} could not be read as JSON ({e}); {fix}") from None


def save_tree(path, tree, metadata: dict | None = None) -> pathlib.Path:
    """Write a params pytree (device or host arrays; dtypes kept) as flattened safetensors."""
    import safetensors.numpy

    flat = {k: np.ascontiguousarray(np.asarray(jax.device_get(v)))
            for k, v in flatten(tree).items()}
    return atomic_write(path, lambda tmp: safetensors.numpy.save_file(flat, tmp, metadata=metadata))


def load_flat(path, fix: str) -> dict:
    """{name: numpy array} of a safetensors file (bfloat16 included).

    A missing, truncated or corrupted file raises CheckpointError naming it and `fix`."""
    from safetensors import SafetensorError, safe_open

    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; {fix}")
    try:
        with safe_open(str(path), framework="numpy") as reader:  # bfloat16 via ml_dtypes
            return {name: np.asarray(reader.get_tensor(name)) for name in reader.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is truncated or corrupted ({type(e).__name__}: "
                              f"{str(e)[:200]}); {fix}") from None


def load_tree(path, fix: str) -> dict:
    """Inverse of save_tree: the nested dict of numpy arrays."""
    return unflatten(load_flat(path, fix))


def shape_problems(got: dict, expected: dict) -> list[str]:
    """What differs between two trees' names and shapes (leaves with .shape), for an error."""
    got, expected = flatten(got), flatten(expected)
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [f"{k}: {tuple(got[k].shape)} vs {tuple(expected[k].shape)}"
             for k in sorted(set(got) & set(expected))
             if tuple(got[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches (file vs config, e.g. {wrong[:3]})")
    return problems
