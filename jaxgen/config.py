"""Loading `configs/<family>.py:<arg>` job configs with `--config.a.b=value` overrides.

A config file defines `get_config(arg)` returning an `ml_collections.ConfigDict` (big_vision
style). Overrides are parsed as Python literals when possible (`1e-4`, `True`, `(2, 4)`), else
kept as strings. Unknown keys raise `ConfigError` naming the key and the keys that exist.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib

import ml_collections

from jaxgen.models.config import ConfigError
from jaxgen.models.janus import EXECUTION_OPTIONS

# The repository's top-level configs/ ships inside the package as jaxgen/configs (a symlink in the
# repository, real files in a wheel), so `configs/sft.py:shapes` works from any working directory
# and from a non-editable install alike.
PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "configs"


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
    """Apply `--config.a.b=v` (or `a.b=v`) strings to `config` in place and return it."""
    for item in overrides:
        key, sep, value = item.removeprefix("--config.").partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} has no value; write --config.{key}=VALUE")
        node = config
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
                where = ".".join(parts[:i]) or "<top>"
                known = sorted(node.keys()) if hasattr(node, "keys") else []
                raise ConfigError(
                    f"unknown config key {key!r} (no {part!r} under {where}; known: {known})")
            if i < len(parts) - 1:
                node = node[part]
        old = node[parts[-1]]
        new = _parse_value(value)
        if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
            new = float(new)
        if isinstance(old, tuple) and isinstance(new, list):
            new = tuple(new)
        try:
            node[parts[-1]] = new
        except TypeError as e:
            raise ConfigError(f"config key {key!r}: {e}") from None
    return config


def load_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
    """Load `path/to/file.py[:arg]`; a bare family name like `sft:shapes` looks in configs/."""
    path_text, _, arg = spec.partition(":")
    # is_file, not exists: a folder named like a family (the demo's data/ or sft/) is no config
    path = pathlib.Path(path_text)
    if not path.is_file() and not path.suffix:
        path = CONFIG_DIR / f"{path_text}.py"
    if not path.is_file() and (PACKAGE_DIR / path_text).is_file():  # configs/... from another cwd
        path = PACKAGE_DIR / path_text
    if not path.is_file() and (CONFIG_DIR / path.name).is_file():
        path = CONFIG_DIR / path.name
    if not path.is_file():
        raise ConfigError(f"config file {path_text!r} not found; pass e.g. configs/sft.py:shapes")
    module_spec = importlib.util.spec_from_file_location(f"jaxgen_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    return apply_overrides(config, overrides)


def use_janus_policy(config: ml_collections.ConfigDict, size: str) -> ml_collections.ConfigDict:
    """Point an RL config at a real Janus-Pro policy of `size` ('1b' | '7b'): its model config,
    its execution options for the loaded checkpoint (configs/janus.py: 7b scanned, 1b unrolled;
    rematerialised; bfloat16, whatever layout the checkpoint was stored in) and prompts from a
    JSONL file (--config.data.path)."""
    config.model = load_config(f"janus:{size}").model
    config.model_options = {k: config.model.text[k] for k in EXECUTION_OPTIONS}
    config.data.update(dict(source="jsonl", path="", max_prompt_tokens=128))
    return config
