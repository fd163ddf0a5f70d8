"""`jaxgen train sft|vq|grpo` commands (see jaxgen/cli.py for the dispatch convention)."""

from __future__ import annotations

import json


def _common_args(parser, default_config: str):
    parser.add_argument("--config", default=default_config,
                        help="config file and variant, e.g. configs/sft.py:shapes")
    parser.add_argument("--workdir", required=True,
                        help="run directory: checkpoints, metrics.jsonl, tb/, samples/; an "
                             "existing one is resumed")


def _print_result(result: dict):
    printable = {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool))}
    metrics = {k: round(v, 5) if isinstance(v, float) else v
               for k, v in (result.get("metrics") or {}).items()
               if isinstance(v, (int, float))}
    print(json.dumps({**printable, "metrics": metrics}, indent=1))


def sft_args(parser):
    _common_args(parser, "configs/sft.py:shapes")


def sft(args) -> int:
    from jaxgen.config import load_config
    from jaxgen.train import sft as sft_lib
    result = sft_lib.train(load_config(args.config, args.config_overrides), args.workdir)
    _print_result(result)
    return 0


def vq_args(parser):
    _common_args(parser, "configs/vq.py:shapes")


def vq(args) -> int:
    from jaxgen.config import load_config
    from jaxgen.train import vq as vq_lib
    result = vq_lib.train(load_config(args.config, args.config_overrides), args.workdir)
    _print_result(result)
    return 0


def grpo_args(parser):
    _common_args(parser, "configs/grpo.py:shapes")


def grpo(args) -> int:
    # The GRPO trainer is owned by the GRPO engineer; it exposes train(config, workdir).
    from jaxgen.config import load_config
    from jaxgen.train import grpo as grpo_lib
    result = grpo_lib.train(load_config(args.config, args.config_overrides), args.workdir)
    _print_result(result if isinstance(result, dict) else {})
    return 0
