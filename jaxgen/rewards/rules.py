"""Host (NumPy) rewards: reasoning format, GenEval detector, scene-graph IoU, plan rules, R_RI.

Pixel-only rewards call the ShapesWorld evaluator (jaxgen.eval) on uint8 images; they run on the
host, which is fine for a detector, and their time is reported by the benchmark.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from jaxgen.errors import UserError
from jaxgen.eval import detector, geneval, scene_graph
from jaxgen.rewards import plan as plan_lib
from jaxgen.rewards.base import RewardBatch, register_reward

FORMAT_MODES = ("plan", "caption")
_SPECIAL = re.compile(r"<[^>\s]+>")


def _need_images(batch: RewardBatch, name: str):
    if batch.images is None:
        raise UserError(f"reward {name!r} needs decoded images; the GRPO loop decodes them when "
                        "a pixel reward is configured")
    return np.asarray(batch.images)


def format_score(text: str, mode: str, max_words: int = 0) -> float:
    """1.0 when the reasoning follows the syntax of `mode`, else 0.0.

    'plan': GoT-R1 layout plan (every object has a box inside the 0..1000 grid).
    'caption': non-empty text without special tags, at most max_words words (0: no limit).
    """
    if mode == "plan":
        return float(plan_lib.plan_is_well_formed(text))
    if mode == "caption":
        words = text.split()
        ok = bool(words) and not _SPECIAL.search(text) and (max_words <= 0 or len(words) <= max_words)
        return float(ok)
    raise UserError(f"unknown format mode {mode!r}; choose one of {FORMAT_MODES}")


@register_reward("format")
def make_format(context, mode: str = "plan", max_words: int = 0):
    """Reasoning syntax reward (1/0 per sample)."""
    if mode not in FORMAT_MODES:
        raise UserError(f"unknown format mode {mode!r}; choose one of {FORMAT_MODES}")
    return lambda batch: np.array([format_score(t, mode, max_words) for t in batch.reasoning],
                                  np.float32)


@register_reward("geneval")
def make_geneval(context):
    """GenEval-style detector reward (Flow-GRPO): 1 if every constraint of the metadata holds."""
    def fn(batch):
        images = _need_images(batch, "geneval")
        return np.array([float(geneval.score(img, plan_lib.metadata_dict(md))["correct"])
                         for img, md in zip(images, batch.metadata)], np.float32)
    return fn


@register_reward("scene_graph_iou")
def make_scene_graph_iou(context, key: str = "sg_iou"):
    """SG-IoU (CompSG) between the graph extracted from the image and the prompt's graph."""
    def fn(batch):
        images = _need_images(batch, "scene_graph_iou")
        out = []
        for img, md in zip(images, batch.metadata):
            gt = plan_lib.metadata_dict(md).get("scene_graph")
            if gt is None:
                raise UserError("scene_graph_iou needs metadata['scene_graph'] in the prompts; "
                                "use ShapesWorld RL prompts or another reward")
            out.append(float(scene_graph.sg_scores(scene_graph.extract(img), gt)[key]))
        return np.array(out, np.float32)
    return fn


@register_reward("plan_prompt_match")
def make_plan_prompt_match(context):
    """Rule-based plan check (counts, colours, relations of the planned boxes vs metadata)."""
    return lambda batch: np.array(
        [plan_lib.plan_matches_prompt(plan_lib.parse_plan(t), md)
         for t, md in zip(batch.reasoning, batch.metadata)], np.float32)


@register_reward("plan_layout")
def make_plan_layout(context, min_gap: float = 0.0, max_aspect: float = 0.0,
                     size_sides: dict | None = None, size_tolerance: float = 0.15):
    """Layout sanity of the reasoning, read from the plan alone (no prompt, image or labels): 1
    when the plan is well formed and its boxes are pairwise apart by >= min_gap grid units, else
    0. Overlapping boxes hide one object behind another, which no drawing can fix: the demo's
    SFT model plans them for 40-55% of its multi-object prompts (docs/experiments.md).

    Optional checks that close the shortcut of squeezing boxes apart (seen in GRPO at lr 1e-4):
    max_aspect (> 0): every box's longer side is at most max_aspect x its shorter side;
    size_sides ({size word: side in grid units}, e.g. ShapesWorld's {'small': 220, 'large':
    360}): a box whose name has the word has both sides within size_tolerance of that side.
    """
    if min_gap < 0 or max_aspect < 0 or size_tolerance < 0:
        raise UserError(f"plan_layout needs min_gap, max_aspect and size_tolerance >= 0, got "
                        f"{min_gap}, {max_aspect}, {size_tolerance}")
    sides = dict(size_sides or {})

    def box_ok(obj) -> bool:
        w, h = obj.box[2] - obj.box[0], obj.box[3] - obj.box[1]
        if max_aspect > 0 and max(w, h) > max_aspect * min(w, h):
            return False
        side = next((sides[word] for word in obj.name.split() if word in sides), None)
        return side is None or all(abs(v - side) <= size_tolerance * side for v in (w, h))

    def score(text):
        if not plan_lib.plan_is_well_formed(text):
            return 0.0
        objects = plan_lib.parse_plan(text)
        return float(plan_lib.layout_is_disjoint(objects, min_gap)
                     and all(box_ok(o) for o in objects))
    return lambda batch: np.array([score(t) for t in batch.reasoning], np.float32)


def _detection_words(det) -> str:
    parts = [getattr(det, a, None) for a in ("size", "color", "texture", "shape")]
    return " ".join(str(p) for p in parts if p)


def plan_image_iou(objects, detections, width: int, height: int) -> float:
    """GoT-R1 R_RI: mean IoU of each planned box with a same-named detection (one-to-one,
    greedy by IoU); a planned object without a matching detection scores 0."""
    if not objects:
        return 0.0
    pairs = []
    for i, o in enumerate(objects):
        pbox = plan_lib.to_pixels(o.box, width, height)
        for j, det in enumerate(detections):
            words = plan_lib.name_words(o.name)
            if str(det.shape).lower() not in words:
                continue
            colour = str(getattr(det, "color", "") or "").lower()
            named_colours = words & set(plan_lib.COLOURS)
            if named_colours and colour not in named_colours:
                continue
            pairs.append((plan_lib.box_iou(pbox, tuple(map(float, det.box_xyxy))), i, j))
    best = np.zeros(len(objects))
    used_o, used_d = set(), set()
    for iou, i, j in sorted(pairs, reverse=True):
        if i in used_o or j in used_d:
            continue
        used_o.add(i)
        used_d.add(j)
        best[i] = iou
    return float(best.mean())


@register_reward("got_box_iou")
def make_got_box_iou(context):
    """GoT-R1 R_RI: IoU between planned boxes and boxes the detector finds in the image."""
    def fn(batch):
        images = _need_images(batch, "got_box_iou")
        out = []
        for img, text in zip(images, batch.reasoning):
            h, w = img.shape[:2]
            out.append(plan_image_iou(plan_lib.parse_plan(text), detector.detect(img), w, h))
        return np.array(out, np.float32)
    return fn


@register_reward("constant")
def make_constant(context, value: float = 1.0):
    """A constant (useful as a product's scale or in tests)."""
    return lambda batch: np.full((len(batch),), value, np.float32)


@register_reward("random_control")
def make_random_control(context, seed: int = 0):
    """Uniform noise in [0, 1): a hash of `seed` and the sample (prompt, reasoning, and its image
    codes or pixels when the batch has them), so a rerun or a resumed run sees the same values.
    A control: GRPO on a reward that carries no information shows how far the policy drifts
    anyway (sampling noise, Adam's normalised steps), the yardstick for a real reward's gain."""
    def fn(batch: RewardBatch):
        pictures = batch.image_tokens if batch.image_tokens is not None else batch.images
        pictures = None if pictures is None else np.asarray(pictures)
        out = np.empty(len(batch), np.float32)
        for i in range(len(batch)):
            h = hashlib.blake2b(f"{seed}\0{batch.prompts[i]}\0{batch.reasoning[i]}".encode(),
                                digest_size=8)
            if pictures is not None:
                h.update(np.ascontiguousarray(pictures[i]).tobytes())
            out[i] = (int.from_bytes(h.digest(), "little") >> 40) / 2.0 ** 24  # exact in float32
        return out
    return fn
