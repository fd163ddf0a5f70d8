"""`jaxgen demo`: ShapesWorld end to end — data, VQ, SFT, judge, GRPO, evaluation report.

Each stage writes into its own directory under the work directory and leaves a `DONE.json`
(its summary and wall time) when it finishes; a rerun skips finished stages and the trainers
resume unfinished ones from their checkpoints. The evaluation uses the pixel-only evaluator,
which is independent of the reward (the judge model).
"""

from __future__ import annotations

import importlib
import json
import pathlib
import time

import jax
import jax.numpy as jnp

from jaxgen import cpu_devices
from jaxgen.config import load_config
from jaxgen.data.build import build_all
from jaxgen.errors import UserError
from jaxgen.eval import compare

STAGES = ("data", "vq", "sft", "judge", "grpo", "eval")


def demo_args(parser):
    parser.add_argument("--config", default="configs/demo.py",
                        help="demo config (default configs/demo.py); --config.x.y=v overrides")
    parser.add_argument("--workdir", default="runs/demo", help="where every stage writes")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated subset of {','.join(STAGES)} (in order)")


def demo(args) -> int:
    config = load_config(args.config, args.config_overrides)
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UserError(f"unknown demo stage(s) {unknown}; choose from {list(STAGES)}")
    summary = run(config, pathlib.Path(args.workdir), stages)
    seconds = {name: round(s.get("seconds", 0)) for name, s in summary.items()}
    # the machine's speed beside the time, so runs on different hosts compare
    print(f"\n[demo] stages (s): {seconds}; total {sum(seconds.values()) / 60:.1f} min on a "
          f"machine whose float32 2048^3 matmul runs at {matmul_gflops():.0f} GFLOP/s")
    print(f"Report: {summary['eval']['report_dir']}" if "eval" in summary else "")
    return 0


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 n^3 matmul rate on JAX's default device (best of `repeats`)."""
    x = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def _stage_done(path: pathlib.Path):
    done = path / "DONE.json"
    return json.loads(done.read_text()) if done.exists() else None


def run(config, workdir: pathlib.Path, stages=STAGES) -> dict:
    """Run (or resume) the named stages in order; returns each stage's summary."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {name: workdir / name for name in STAGES}
    summary = {}
    for name in STAGES:
        done = _stage_done(paths[name])
        if done is not None:
            summary[name] = done
            print(f"[demo] {name}: done already ({done.get('seconds', 0):.0f} s), skipping")
            continue
        if name not in stages:
            continue
        print(f"[demo] {name}: starting")
        start = time.time()
        result = _STAGE_FNS[name](config, paths)
        result["seconds"] = time.time() - start
        paths[name].mkdir(parents=True, exist_ok=True)
        tmp = paths[name] / "DONE.json.tmp"
        tmp.write_text(json.dumps(result, indent=2, default=str))
        tmp.rename(paths[name] / "DONE.json")
        summary[name] = result
        print(f"[demo] {name}: finished in {result['seconds']:.0f} s")
    return summary


# ---------------------------------------------------------------------------------------------
# Stages. Each takes the demo config and the stage directories and returns a JSON summary.

def _data(config, paths):
    return dict(build_all(config.data, paths["data"]) or {})


def _train(config, stage: str, target: str, stage_config, workdir: pathlib.Path) -> dict:
    """Call `target(stage_config, workdir)` ("module:function"): on a CPU-only host in a child
    process with config.cpu_devices[stage] CPU devices (jaxgen/cpu_devices.py), else here."""
    devices = int(config.get("cpu_devices", {}).get(stage, 1))
    if cpu_devices.cpu_split_applies(devices):
        return cpu_devices.run_with_cpu_devices(target, stage_config, workdir, devices,
                                                f"pass --config.cpu_devices.{stage}=1")
    module, name = target.split(":")
    return dict(getattr(importlib.import_module(module), name)(stage_config, str(workdir)))


def _vq(config, paths):
    return _train(config, "vq", "jaxgen.train.vq:train", config.vq, paths["vq"])


def _sft_config(base, paths):
    c = base.copy_and_resolve_references()
    c.data.data_dir = str(paths["data"])
    c.data.vq_params = str(paths["vq"] / "vq_params.safetensors")
    return c


def _sft(config, paths):
    return _train(config, "sft", "jaxgen.train.sft:train", _sft_config(config.sft, paths),
                  paths["sft"])


def _judge(config, paths):
    """The reward VLM: the SFT'd model taught to answer 'does this image show ...?' (as in
    Janus-Pro-R1, where the generator learns to judge its own images)."""
    c = _sft_config(config.judge, paths)
    c.init_checkpoint = str(paths["sft"] / "final")
    return _train(config, "judge", "jaxgen.train.sft:train", c, paths["judge"])


def grpo_stage_config(config, workdir: pathlib.Path):
    """The GRPO stage's config: the demo's `grpo` with the SFT policy and judge of `workdir`."""
    c = config.grpo.copy_and_resolve_references()
    for field, stage in (("policy_checkpoint", "sft"), ("judge_checkpoint", "judge")):
        path = pathlib.Path(workdir) / stage / "final"
        if not path.is_dir():
            raise UserError(f"{path} not found: the demo's {stage} stage has not finished in "
                            f"{workdir}; run `jaxgen demo --workdir {workdir} --stages "
                            f"data,vq,sft,judge` first")
        c[field] = str(path)
    return c


def _grpo(config, paths):
    return _train(config, "grpo", "jaxgen.train.grpo:train",
                  grpo_stage_config(config, paths["grpo"].parent), paths["grpo"])


def _eval(config, paths):
    return compare.evaluate_and_report(
        config.eval,
        data_dir=paths["data"],
        checkpoints={"SFT": paths["sft"] / "final", "GRPO": paths["grpo"] / "final"},
        grpo_metrics=paths["grpo"] / "metrics.jsonl",
        out_dir=paths["eval"] / "report")


_STAGE_FNS = {"data": _data, "vq": _vq, "sft": _sft, "judge": _judge, "grpo": _grpo,
              "eval": _eval}
