"""ShapesWorld prompts by category, their GenEval-style metadata and the held-out split.

Categories (GenEval tags, then T2I-CompBench-style ones with a `cb_` prefix):
  single_object  "a photo of a circle"
  two_object     "a photo of a circle and a square"
  counting       "a photo of three triangles"           (exclude: count + 1)
  colors         "a photo of a red circle"
  position       "a photo of a circle left of a square"  (GenEval: subject is include[1])
  color_attr     "a photo of a red circle and a blue square"
  cb_color       "a red circle and a blue circle"        (colour binding; shapes may repeat)
  cb_shape       "a small circle and a large square"     (size/shape binding)
  cb_texture     "a striped circle and a dotted square"  (texture binding, large objects)
  cb_spatial     "a red circle on the left of a blue square"
  cb_complex     "a red circle is left of a blue square and the blue square is above a green
                  triangle"                               (two relations from a scene graph)

Metadata is GenEval's jsonl format: {"tag", "include": [{"class", "count", "color"?, "size"?,
"texture"?, "position"?: [relation, include_index]}], "exclude": [...], "prompt"} plus
"scene_graph": the prompt's graph (specified attributes only, stated relations, complete=False).

Held-out compositions (never in the train split, and train scenes never render the colour-shape
pairs): shapes_world.HELDOUT_COLOR_SHAPE, HELDOUT_RELATIONS (subject class, relation, reference
class) and HELDOUT_COUNTS (count, class). The test split of a category that can contain one of
them holds only prompts that do; categories that cannot (single_object, two_object, cb_shape,
cb_texture) draw fresh samples of the same distribution for their test prompts.

`sample_prompt(rng, split, category=None) -> (prompt, metadata, scene)` draws a prompt with a
ground-truth ShapesWorld scene for it.
"""

from __future__ import annotations

import copy
from typing import Optional

import numpy as np

from jaxgen.data.shapes_world import (COLOR_NAMES, HELDOUT_COLOR_SHAPE, OPPOSITE, RELATIONS,
                                      SHAPES, SIZES, Scene, scene_for)
from jaxgen.errors import UserError

GENEVAL_CATEGORIES = ("single_object", "two_object", "counting", "colors", "position",
                      "color_attr")
COMPBENCH_CATEGORIES = ("cb_color", "cb_shape", "cb_texture", "cb_spatial", "cb_complex")
CATEGORIES = GENEVAL_CATEGORIES + COMPBENCH_CATEGORIES

HELDOUT_RELATIONS = frozenset({("triangle", "above", "circle"), ("square", "left of", "triangle"),
                               ("circle", "below", "square")})
HELDOUT_COUNTS = frozenset({(3, "circle"), (4, "triangle")})

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
COUNTS = (2, 3, 4)
BINDING_TEXTURES = ("striped", "dotted")
SPATIAL_PHRASES = {"left of": "on the left of", "right of": "on the right of",
                   "above": "on the top of", "below": "on the bottom of"}
MAX_SAMPLE_TRIES = 1000


def plural(shape: str, count: int) -> str:
    return shape if count == 1 else f"{shape}s"


def _np(item: dict, with_article: bool = True) -> str:
    """Noun phrase of an include item: '[a] [size] [color] [texture] shape'."""
    words = [item.get("size"), item.get("color"), item.get("texture"), item["class"]]
    words = [w for w in words if w and w != "plain"]
    text = " ".join(words)
    return f"a {text}" if with_article else text


def describe(metadata: dict) -> str:
    """The prompt text of a metadata dict (inverse of the samplers below)."""
    tag, inc = metadata["tag"], metadata["include"]
    if tag == "single_object" or tag == "colors":
        return f"a photo of {_np(inc[0])}"
    if tag == "two_object" or tag == "color_attr":
        return f"a photo of {_np(inc[0])} and {_np(inc[1])}"
    if tag == "counting":
        n = int(inc[0]["count"])
        word = NUMBER_WORDS.get(n, str(n))
        return f"a photo of {word} {plural(inc[0]['class'], n)}"
    if tag == "position":
        rel = inc[1]["position"][0]
        return f"a photo of {_np(inc[1])} {rel} {_np(inc[0])}"
    if tag in ("cb_color", "cb_shape", "cb_texture"):
        return f"{_np(inc[0])} and {_np(inc[1])}"
    if tag == "cb_spatial":
        rel = inc[1]["position"][0]
        return f"{_np(inc[1])} {SPATIAL_PHRASES[rel]} {_np(inc[0])}"
    if tag == "cb_complex":
        r1, r2 = inc[1]["position"][0], inc[2]["position"][0]
        # include[1] rel include[0]; include[2] rel include[1]
        return (f"{_np(inc[1])} is {r1} {_np(inc[0])} and the {_np(inc[1], False)} is "
                f"{OPPOSITE[r2]} {_np(inc[2])}")
    raise UserError(f"unknown category {tag!r}; known categories are {CATEGORIES}")


def prompt_graph(metadata: dict) -> dict:
    """The prompt's scene graph: specified attributes only, stated relations (complete=False)."""
    objects, first = [], []
    for item in metadata["include"]:
        first.append(len(objects))
        attrs = {"shape": item["class"]}
        for key in ("color", "size", "texture"):
            if item.get(key):
                attrs[key] = item[key]
        objects.extend(dict(attrs) for _ in range(int(item.get("count", 1))))
    relations = []
    for k, item in enumerate(metadata["include"]):
        if "position" in item:
            rel, ref = item["position"]
            for a in range(first[k], first[k] + int(item.get("count", 1))):
                for c in range(first[ref], first[ref] + int(metadata["include"][ref].get("count", 1))):
                    relations.append([a, rel, c])
    return {"objects": objects, "relations": relations, "complete": False}


def finalize(metadata: dict) -> dict:
    """Fill in 'prompt', 'exclude' default and 'scene_graph' from tag and include."""
    metadata.setdefault("exclude", [])
    metadata["prompt"] = describe(metadata)
    metadata["scene_graph"] = prompt_graph(metadata)
    return metadata


def is_heldout(metadata: dict) -> bool:
    """True when the prompt names any held-out composition."""
    inc = metadata["include"]
    for item in inc:
        if (item.get("color"), item["class"]) in HELDOUT_COLOR_SHAPE:
            return True
        if metadata["tag"] == "counting" and (int(item["count"]), item["class"]) in HELDOUT_COUNTS:
            return True
        if "position" in item:
            rel, ref = item["position"]
            if (item["class"], rel, inc[ref]["class"]) in HELDOUT_RELATIONS:
                return True
    return False


CAN_HOLD_OUT = ("counting", "colors", "position", "color_attr", "cb_color", "cb_spatial",
                "cb_complex")


def _pick(rng, seq, k=1, distinct=True):
    idx = rng.choice(len(seq), size=k, replace=not distinct)
    return [seq[i] for i in idx]


def _raw_metadata(rng: np.random.Generator, tag: str) -> dict:
    if tag == "single_object":
        inc = [{"class": _pick(rng, SHAPES)[0], "count": 1}]
    elif tag == "two_object":
        s1, s2 = _pick(rng, SHAPES, 2)
        inc = [{"class": s1, "count": 1}, {"class": s2, "count": 1}]
    elif tag == "counting":
        n = int(_pick(rng, COUNTS)[0])
        shape = _pick(rng, SHAPES)[0]
        return {"tag": tag, "include": [{"class": shape, "count": n}],
                "exclude": [{"class": shape, "count": n + 1}]}
    elif tag == "colors":
        inc = [{"class": _pick(rng, SHAPES)[0], "count": 1, "color": _pick(rng, COLOR_NAMES)[0]}]
    elif tag == "position":
        ref, sub = _pick(rng, SHAPES, 2)
        inc = [{"class": ref, "count": 1},
               {"class": sub, "count": 1, "position": [_pick(rng, RELATIONS)[0], 0]}]
    elif tag == "color_attr":
        s1, s2 = _pick(rng, SHAPES, 2)
        c1, c2 = _pick(rng, COLOR_NAMES, 2)
        inc = [{"class": s1, "count": 1, "color": c1}, {"class": s2, "count": 1, "color": c2}]
    elif tag == "cb_color":
        s1, s2 = _pick(rng, SHAPES, 2, distinct=False)
        c1, c2 = _pick(rng, COLOR_NAMES, 2)
        inc = [{"class": s1, "count": 1, "color": c1}, {"class": s2, "count": 1, "color": c2}]
    elif tag == "cb_shape":
        s1, s2 = _pick(rng, SHAPES, 2)
        z1, z2 = _pick(rng, SIZES, 2, distinct=False)
        inc = [{"class": s1, "count": 1, "size": z1}, {"class": s2, "count": 1, "size": z2}]
    elif tag == "cb_texture":
        s1, s2 = _pick(rng, SHAPES, 2)
        t1, t2 = _pick(rng, BINDING_TEXTURES, 2, distinct=False)
        inc = [{"class": s1, "count": 1, "size": "large", "texture": t1},
               {"class": s2, "count": 1, "size": "large", "texture": t2}]
    elif tag == "cb_spatial":
        s1, s2 = _pick(rng, SHAPES, 2, distinct=False)
        c1, c2 = _pick(rng, COLOR_NAMES, 2)
        inc = [{"class": s1, "count": 1, "color": c1},
               {"class": s2, "count": 1, "color": c2, "position": [_pick(rng, RELATIONS)[0], 0]}]
    elif tag == "cb_complex":
        shapes = _pick(rng, SHAPES, 3, distinct=False)
        colors = _pick(rng, COLOR_NAMES, 3)
        r1 = _pick(rng, RELATIONS)[0]
        # the second relation must not contradict the first along the same axis
        axis = {"left of": 0, "right of": 0, "above": 1, "below": 1}
        r2 = _pick(rng, [r for r in RELATIONS if axis[r] != axis[r1]])[0]
        inc = [{"class": shapes[0], "count": 1, "color": colors[0]},
               {"class": shapes[1], "count": 1, "color": colors[1], "position": [r1, 0]},
               {"class": shapes[2], "count": 1, "color": colors[2], "position": [r2, 1]}]
    else:
        raise UserError(f"unknown category {tag!r}; known categories are {CATEGORIES}")
    return {"tag": tag, "include": inc, "exclude": []}


def sample_metadata(rng: np.random.Generator, split: str, category: Optional[str] = None) -> dict:
    """GenEval-style metadata of a random prompt of `split` ('train' or 'test')."""
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r}; use 'train' or 'test'")
    tag = category or CATEGORIES[rng.integers(len(CATEGORIES))]
    if tag not in CATEGORIES:
        raise UserError(f"unknown category {tag!r}; known categories are {CATEGORIES}")
    want_heldout = split == "test" and tag in CAN_HOLD_OUT
    for _ in range(MAX_SAMPLE_TRIES):
        meta = _raw_metadata(rng, tag)
        if is_heldout(meta) == want_heldout:
            return finalize(meta)
    raise RuntimeError(f"no {split} prompt found for category {tag}")  # unreachable by design


def sample_prompt(rng: np.random.Generator, split: str, category: Optional[str] = None,
                  canvas: int = 64) -> tuple[str, dict, Scene]:
    """(prompt, metadata dict, scene): a random prompt of `split` ('train' | 'test') and a
    ground-truth scene for it (train scenes never show held-out colour-shape pairs)."""
    metadata = sample_metadata(rng, split, category)
    scene = scene_for(metadata, rng, canvas, avoid_heldout=(split == "train"))
    return metadata["prompt"], metadata, scene


def perturb_metadata(metadata: dict, rng: np.random.Generator, kind: str) -> Optional[dict]:
    """A minimally changed copy that the original's rendering does NOT satisfy, or None when
    `kind` ('color' | 'shape' | 'count' | 'relation') cannot apply to this prompt."""
    meta = copy.deepcopy(metadata)
    inc = meta["include"]
    if kind == "color":
        idx = [k for k, it in enumerate(inc) if it.get("color")]
        if not idx:
            return None
        k = idx[rng.integers(len(idx))]
        used = {it.get("color") for it in inc}
        inc[k]["color"] = _pick(rng, [c for c in COLOR_NAMES if c not in used])[0]
    elif kind == "shape":
        k = int(rng.integers(len(inc)))
        used = {it["class"] for it in inc}
        others = [s for s in SHAPES if s not in used]
        if not others:
            return None
        new = _pick(rng, others)[0]
        for ex in meta["exclude"]:
            if ex["class"] == inc[k]["class"]:
                ex["class"] = new
        inc[k]["class"] = new
    elif kind == "count":
        if meta["tag"] != "counting":
            return None
        n = int(inc[0]["count"])
        new = n + 1 if (n == min(COUNTS) or (n < max(COUNTS) and rng.random() < 0.5)) else n - 1
        inc[0]["count"] = new
        meta["exclude"] = [{"class": inc[0]["class"], "count": new + 1}]
    elif kind == "relation":
        idx = [k for k, it in enumerate(inc) if "position" in it]
        if not idx:
            return None
        k = idx[rng.integers(len(idx))]
        inc[k]["position"][0] = OPPOSITE[inc[k]["position"][0]]
    else:
        raise UserError(f"unknown perturbation {kind!r}; use color, shape, count or relation")
    meta.pop("prompt", None)
    meta.pop("scene_graph", None)
    return finalize(meta)


PERTURBATIONS = ("color", "shape", "count", "relation")
