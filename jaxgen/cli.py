"""The `jaxgen` command.

Each command lives next to the code it drives; this file only maps command names to
"module:name", where the module defines `name_args(parser)` (declare arguments) and `name(args)`
(run, return an exit code). Modules are imported lazily so `jaxgen --help` stays fast.
Errors a user can cause are `jaxgen.errors.UserError`: printed as one line, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (command words, one-line help, "module:name")
COMMANDS = [
    (("demo",), "end-to-end ShapesWorld run: data, VQ, SFT, judge, GRPO, evaluation report",
     "jaxgen.demo:demo"),
    (("data", "build"), "build the ShapesWorld datasets and tokenizer", "jaxgen.data.cli:build"),
    (("eval", "images"), "score a folder of generated images with the pixel-only evaluator",
     "jaxgen.eval.cli:images"),
    (("convert", "hf-to-jax"), "import a Hugging Face Janus directory as a jaxgen checkpoint",
     "jaxgen.convert.cli:hf_to_jax"),
    (("convert", "jax-to-hf"), "export a jaxgen checkpoint as a Hugging Face Janus directory",
     "jaxgen.convert.cli:jax_to_hf"),
    (("sample",), "generate images (optionally reasoning first) from a checkpoint",
     "jaxgen.sampling.cli:sample"),
    (("train", "sft"), "supervised fine-tuning of the unified model", "jaxgen.train.cli:sft"),
    (("train", "vq"), "train the VQ image tokenizer", "jaxgen.train.cli:vq"),
    (("train", "grpo"), "GRPO reinforcement learning of reasoning-then-image generation",
     "jaxgen.train.cli:grpo"),
    (("train", "flow"), "flow-matching training of the diffusion decoder on the unified model",
     "jaxgen.train.cli:flow"),
    (("train", "flow_grpo"), "Flow-GRPO reinforcement learning of the diffusion decoder",
     "jaxgen.train.cli:flow_grpo"),
    (("aot", "sft"), "compile the SFT step for a target mesh from shapes: memory per device",
     "jaxgen.train.aot:sft"),
    (("bench", "sample"), "image-token sampling throughput vs transformers",
     "jaxgen.bench.sample:sample"),
    (("bench", "sft"), "SFT step throughput vs a PyTorch eager step", "jaxgen.bench.sft:sft"),
    (("bench", "grpo"), "time split of one GRPO iteration", "jaxgen.bench.grpo:grpo"),
]


def _resolve(target: str):
    module_name, name = target.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, f"{name}_args"), getattr(module, name)


def build_parser(argv_words=()) -> argparse.ArgumentParser:
    """Build the parser; only the command named in `argv_words` imports its module."""
    parser = argparse.ArgumentParser(prog="jaxgen", description=__doc__.splitlines()[0])
    groups: dict = {}
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    top.required = True
    for words, help_text, target in COMMANDS:
        if len(words) == 1:
            p = top.add_parser(words[0], help=help_text)
        else:
            if words[0] not in groups:
                g = top.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = g.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
                groups[words[0]].required = True
            p = groups[words[0]].add_parser(words[1], help=help_text)
        p.set_defaults(_target=target)
        if tuple(argv_words[: len(words)]) == words:
            add_args, _ = _resolve(target)
            add_args(p)
    return parser


def _maybe_initialize_distributed() -> None:
    """Multi-host runs (launch/) set JAXGEN_DISTRIBUTED=1 on every host; `jaxgen.launch` then
    calls `jax.distributed.initialize` with what the environment gives (TPU pod, SLURM step, or
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)."""
    from jaxgen.errors import UserError
    from jaxgen.launch import maybe_initialize_distributed

    try:
        maybe_initialize_distributed()
    except UserError as e:
        print(f"jaxgen: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv=None) -> int:
    from jaxgen.errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    words = [a for a in argv if not a.startswith("-")][:2]
    parser = build_parser(words)
    args, unknown = parser.parse_known_args(argv)
    # `--config.a.b=v` overrides are collected for commands that take a config.
    overrides = [u for u in unknown if u.startswith("--config.")]
    rest = [u for u in unknown if not u.startswith("--config.")]
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if overrides and not (hasattr(args, "config") or hasattr(args, "model_config")):
        parser.error(f"this command takes no config, so {overrides[0]} would be ignored")
    args.config_overrides = overrides
    _maybe_initialize_distributed()
    _, run = _resolve(args._target)
    try:
        _check_local_paths(args)
        return int(run(args) or 0)
    except UserError as e:
        print(f"jaxgen: error: {e}", file=sys.stderr)
        return 2


def _check_local_paths(args):
    """Work and output directories are local (or shared-filesystem) paths: the trainers write
    them with pathlib, which would turn gs://bucket/run into a relative directory gs:/bucket/run."""
    from jaxgen.errors import UserError

    for name in ("workdir", "out", "out_dir"):
        value = getattr(args, name, None)
        if isinstance(value, str) and "://" in value:
            raise UserError(f"--{name}={value}: object-store URLs are not supported; mount the "
                            "bucket (e.g. gcsfuse) or use a shared filesystem and pass its path")


if __name__ == "__main__":
    sys.exit(main())
