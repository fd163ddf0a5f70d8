"""`jaxgen train sft|vq|grpo|flow|flow_grpo` commands (see jaxgen/cli.py for the dispatch convention)."""

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


def _train(module_name: str, args) -> int:
    """Run `jaxgen.train.<module_name>.train(config, workdir)` and print its summary."""
    import importlib

    from jaxgen.config import load_config
    trainer = importlib.import_module(f"jaxgen.train.{module_name}")
    result = trainer.train(load_config(args.config, args.config_overrides), args.workdir)
    _print_result(result)
    return 0


def sft(args) -> int:
    return _train("sft", args)


def vq_args(parser):
    _common_args(parser, "configs/vq.py:shapes")


def vq(args) -> int:
    return _train("vq", args)


def grpo_args(parser):
    _common_args(parser, "configs/grpo.py:shapes")
    parser.add_argument("--export-step", type=int, default=None,
                        help="instead of training, write kept checkpoint N of the run as "
                             "<workdir>/step_N (same layout as <workdir>/final); give the run's "
                             "own --config and overrides")


def grpo(args) -> int:
    if args.export_step is None:
        return _train("grpo", args)
    from jaxgen.config import load_config
    from jaxgen.train import grpo as trainer
    out = trainer.export_step(load_config(args.config, args.config_overrides), args.workdir,
                              args.export_step)
    print(json.dumps({"policy_checkpoint": str(out), "step": args.export_step}))
    return 0


def flow_args(parser):
    _common_args(parser, "configs/flow.py:shapes")


def flow(args) -> int:
    return _train("flow_matching", args)


def flow_grpo_args(parser):
    _common_args(parser, "configs/flow_grpo.py:shapes")


def flow_grpo(args) -> int:
    return _train("flow_grpo", args)
