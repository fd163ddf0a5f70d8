"""`jaxgen bench grpo`: the time of one GRPO iteration split into rollout, reward, reference
and update, and the share of wall time spent outside jitted work (goal < 5%).

Jitted work is measured by timing every jitted call (sampler, VQ decode, scoring, update, VLM
judge) to completion; host work is everything else (tokenising, detokenising, advantages,
Python). Pixel-only rewards (detector, scene graphs) are NumPy by design and reported on their
own line. Without a policy checkpoint the benchmark builds a ShapesWorld tokenizer and a random
model of the config's size.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from jaxgen.config import load_config
from jaxgen.data import prompts as shapes_prompts
from jaxgen.data.tokenizer import build_tokenizer, special_token_ids
from jaxgen.demo import grpo_stage_config
from jaxgen.models import janus
from jaxgen.rewards import tokenizer_consistency
from jaxgen.rewards.base import defined_in
from jaxgen.sampling import sampler as sampler_lib
from jaxgen.sampling import understanding
from jaxgen.train import grpo as grpo_lib


def grpo_args(parser):
    parser.add_argument("--config", default="grpo:shapes_detector",
                        help="GRPO config (default: configs/grpo.py:shapes_detector)")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations (compilation)")
    parser.add_argument("--demo-workdir", default="",
                        help="benchmark the demo's GRPO stage instead: the `grpo` of "
                             "configs/demo.py (--config.grpo.x=v overrides it) with the SFT policy "
                             "and judge of this `jaxgen demo` work directory")


def _random_policy(config):
    rng = np.random.default_rng(0)
    corpus = [shapes_prompts.sample_metadata(rng, "train")["prompt"] for _ in range(500)]
    tokenizer = build_tokenizer(corpus)
    model = config.model.to_dict()
    model.update(special_token_ids(tokenizer))
    model["text"]["vocab_size"] = max(len(tokenizer), model["text"]["vocab_size"])
    model_config = janus.JanusConfig.from_dict(model)
    params = jax.jit(janus.init_params, static_argnums=0)(model_config, jax.random.PRNGKey(0))
    return params, model_config, tokenizer


class _Timer:
    """Wraps a callable: blocks on its result and adds the seconds to `sink[name]`."""

    def __init__(self, fn, name: str, sink: dict):
        self.fn, self.name, self.sink = fn, name, sink

    def __call__(self, *a, **kw):
        start = time.perf_counter()
        out = jax.block_until_ready(self.fn(*a, **kw))
        self.sink[self.name] = self.sink.get(self.name, 0.0) + time.perf_counter() - start
        return out


def _jitted_entry_points():
    """(module, attribute) of every jitted function an iteration calls outside the runner; each
    is looked up through its module at call time, so patching the attribute times every call."""
    judge = ("yes_probability", "yes_no_logit_from_codes", "greedy_answer",
             "answer_log_likelihood", "answer_log_likelihood_from_codes")
    return ([(sampler_lib, "sample")] + [(understanding, name) for name in judge]
            + [(tokenizer_consistency, "surviving_code_fraction")])


def run_bench(config, iterations: int, warmup: int, policy=None) -> dict:
    if policy is None and not config.get("policy_checkpoint"):
        policy = _random_policy(config)
    runner = grpo_lib.GRPORunner(config, policy=policy)
    for it in range(warmup):  # compile everything before any wrapper sees a tracer
        runner.iteration(it)
    jitted: dict = {}
    for name in ("_update", "_score", "_decode"):
        setattr(runner, name, _Timer(getattr(runner, name), f"runner{name}", jitted))
    patched = [(module, attr, getattr(module, attr)) for module, attr in _jitted_entry_points()]
    for module, attr, fn in patched:
        setattr(module, attr, _Timer(fn, attr, jitted))
    host = defined_in("jaxgen.rewards.rules")  # the NumPy rewards, timed as host work
    try:
        rows, calls = [], {}
        for it in range(warmup, warmup + iterations):
            jitted.clear()
            m = runner.iteration(it)
            trees = [runner.reward] + ([runner.text_reward] if runner.text_reward else [])
            host_reward = sum(v for tree in trees for k, v in tree.timings.items()
                              if k.split("#")[0] in host)
            m["time_jitted"] = sum(jitted.values())
            m["time_host_reward"] = host_reward
            rows.append(m)
            for k, v in jitted.items():
                calls[k] = calls.get(k, 0.0) + v / iterations
    finally:
        for module, attr, fn in patched:
            setattr(module, attr, fn)
    keys = ("time_rollout", "time_reward", "time_reference", "time_update", "time_iteration",
            "time_jitted", "time_host_reward")
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    other = out["time_iteration"] - out["time_jitted"] - out["time_host_reward"]
    out["time_host_other"] = other
    out["share_outside_jit"] = other / out["time_iteration"]
    out["share_outside_jit_incl_host_rewards"] = (other + out["time_host_reward"]) / \
        out["time_iteration"]
    out["jitted_calls"] = calls  # {function: seconds per iteration}
    out["batch"] = runner.batch_size
    out["devices"] = len(runner.mesh.devices.flat)
    return out


def grpo(args) -> int:
    if args.demo_workdir:
        config = grpo_stage_config(load_config("demo", args.config_overrides), args.demo_workdir)
    else:
        config = load_config(args.config, args.config_overrides)
    r = run_bench(config, args.iterations, args.warmup)
    it = r["time_iteration"]
    print(f"GRPO iteration ({r['batch']} samples, {r['devices']} device(s)): {it:.3f} s")
    for name in ("rollout", "reward", "reference", "update"):
        t = r[f"time_{name}"]
        print(f"  {name:<10} {t:8.3f} s  {100 * t / it:5.1f} %")
    print(f"  jitted work            {r['time_jitted']:8.3f} s")
    for name, t in sorted(r["jitted_calls"].items(), key=lambda kv: -kv[1]):
        print(f"    {name:<34} {t:8.3f} s")
    print(f"  host rewards (NumPy)   {r['time_host_reward']:8.3f} s")
    print(f"  other host work        {r['time_host_other']:8.3f} s")
    print(f"share outside jitted work: {100 * r['share_outside_jit']:.2f} % (goal < 5 %); "
          f"with NumPy rewards: {100 * r['share_outside_jit_incl_host_rewards']:.2f} %")
    return 0
