"""Reward registry and composition.

A reward is `fn(batch: RewardBatch) -> float32[B]` (NumPy or a device array). Rewards are built
from config by name through factories registered here: `factory(context, **kwargs) -> fn`, where
`context` (RewardContext) carries what model-based rewards need (mesh, policy VQ decoder, loaded
judges). Composition is a tree in the config:

    {'name': 'geneval', 'weight': 1.0, 'kwargs': {...}}                 a leaf
    {'op': 'sum' | 'product', 'terms': [node, ...], 'weight': 1.0}      an inner node

A sum is the weighted sum of its terms; a product multiplies its terms' weighted values (GoT-R1:
R_PI * (R_sem + R_spa) * R_RI). The streams handed to the advantage estimator (for per-reward
normalisation) are the terms of the top-level sum, unweighted, with their weights; any other top
node is a single stream.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import numpy as np

from jaxgen import parallel
from jaxgen.errors import UserError
from jaxgen.registry import Registry


@dataclasses.dataclass
class RewardBatch:
    """What a reward may look at; every list / array has B = num_prompts * group_size entries.

    images: uint8[B, H, W, 3] host pixels (None until something decoded them);
    image_tokens: int32[B, N] device codes (lets in-graph rewards decode pixels on device).
    """
    prompts: list
    reasoning: list
    metadata: list
    images: Any = None
    image_tokens: Any = None

    def __len__(self):
        return len(self.prompts)


@dataclasses.dataclass
class RewardContext:
    """Shared state of model-based rewards, created once per training run.

    mesh / layout: where judge parameters are placed; policy_params_fn() returns the current
    policy params (for in-graph VQ decoding of image tokens); judges caches loaded VLM judges by
    checkpoint path so several rewards share one copy.
    """
    mesh: Any = None
    layout: str = "fsdp"
    policy_config: Any = None
    policy_params_fn: Callable | None = None
    policy_tokenizer: Any = None
    judges: dict = dataclasses.field(default_factory=dict)


# Factories `factory(context, **kwargs) -> reward_fn`; importing jaxgen.rewards registers the
# built-in ones.
FACTORIES = Registry("reward", "rewards")
register_reward = FACTORIES.register
available = FACTORIES.names


def defined_in(module: str) -> tuple[str, ...]:
    """Names of the registered rewards whose factory lives in `module` (e.g. the host NumPy
    rewards of 'jaxgen.rewards.rules')."""
    return tuple(n for n in available() if FACTORIES.get(n).__module__ == module)


def make_reward(name: str, context: RewardContext | None = None, **kwargs) -> Callable:
    """Build one registered reward function."""
    factory = FACTORIES.get(name)
    try:
        return factory(context or RewardContext(), **kwargs)
    except TypeError as e:
        raise UserError(f"reward {name!r}: bad kwargs {sorted(kwargs)} ({e})") from None


def plain_spec(node):
    """Deep copy of a spec (ConfigDicts, tuples) as plain dicts and lists."""
    if hasattr(node, "to_dict"):
        node = node.to_dict()
    if isinstance(node, dict):
        return {k: plain_spec(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [plain_spec(v) for v in node]
    return node


def _as_dict(node):
    if not isinstance(node, dict):
        raise UserError(f"reward spec {node!r} must be a dict with 'name' or 'op'")
    return node


class CompositeReward:
    """A reward tree built from config. Call it to get (total_b, streams_bk, weights_k).

    `timings` holds the seconds each leaf spent in its last call (the benchmark reports them).
    """

    def __init__(self, spec, context: RewardContext | None = None):
        self.context = context or RewardContext()
        self.spec = _as_dict(plain_spec(spec))
        self.leaves: dict[str, Callable] = {}
        self.timings: dict[str, float] = {}
        self._check(self.spec, "rewards")
        self.stream_names = self._streams()

    def _check(self, node, where):
        node = _as_dict(node)
        if "op" in node:
            if node["op"] not in ("sum", "product"):
                raise UserError(f"{where}: op {node['op']!r} must be 'sum' or 'product'")
            terms = node.get("terms") or []
            if not terms:
                raise UserError(f"{where}: '{node['op']}' needs a non-empty 'terms' list")
            for i, t in enumerate(terms):
                self._check(t, f"{where}.terms[{i}]")
            return
        if "name" not in node:
            raise UserError(f"{where}: a reward leaf needs 'name' (one of {available()})")
        key = node.get("label") or node["name"]
        if key in self.leaves:
            key = f"{key}#{len(self.leaves)}"
        node["_key"] = key
        self.leaves[key] = make_reward(node["name"], self.context, **dict(node.get("kwargs") or {}))

    def _streams(self):
        top = self.spec
        if top.get("op") == "sum":
            return [self._label(t) for t in top["terms"]]
        return [self._label(top)]

    def _label(self, node):
        node = _as_dict(node)
        if "op" in node:
            return node["op"] + "(" + ",".join(self._label(t) for t in node["terms"]) + ")"
        return node["_key"]

    def _eval(self, node, batch, cache):
        node = _as_dict(node)
        if "op" in node:
            vals = [float(_as_dict(t).get("weight", 1.0)) * self._eval(t, batch, cache)
                    for t in node["terms"]]
            out = vals[0]
            for v in vals[1:]:
                out = out + v if node["op"] == "sum" else out * v
            return out
        key = node["_key"]
        if key not in cache:
            start = time.perf_counter()
            # whole on every host (a device reward's output may be split over several)
            value = np.asarray(parallel.to_host(self.leaves[key](batch)), np.float32)
            self.timings[key] = time.perf_counter() - start
            if value.shape != (len(batch),):
                raise UserError(f"reward {key!r} returned shape {value.shape}, expected "
                                f"({len(batch)},)")
            cache[key] = value
        return cache[key]

    def __call__(self, batch: RewardBatch):
        cache: dict = {}
        top = self.spec
        if top.get("op") == "sum":
            streams = [self._eval(t, batch, cache) for t in top["terms"]]
            weights = [float(_as_dict(t).get("weight", 1.0)) for t in top["terms"]]
        else:
            streams = [self._eval(top, batch, cache)]
            weights = [float(top.get("weight", 1.0))]
        streams_bk = np.stack(streams, axis=1).astype(np.float32)
        total_b = streams_bk @ np.asarray(weights, np.float32)
        return total_b, streams_bk, weights


def weighted_sum(rewards: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    return sum(float(w) * np.asarray(r, np.float32) for r, w in zip(rewards, weights))
