"""Shared helper for recipe configs: load configs/grpo.py's base config by path."""

import importlib.util
import pathlib

from jaxgen.config import load_config


def grpo_base(arg="shapes"):
    path = pathlib.Path(__file__).resolve().parent.parent / "grpo.py"
    spec = importlib.util.spec_from_file_location("jaxgen_config_grpo_base", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.get_config(arg)


def janus_model(arg):
    return load_config(f"janus:{arg}").model
