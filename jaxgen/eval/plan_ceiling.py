"""Plan ceiling: what a model's samples would score if each image drew its own layout plan.

A reasoning-then-drawing model can fail in two places: the plan (wrong objects, colours, counts
or places for the prompt, or a plan that does not parse) and the drawing (a right plan drawn
badly). Rendering every sample's plan with the ShapesWorld renderer, passing it through the
model's VQ tokenizer (so the drawing is as good as the tokenizer allows) and scoring it with the
pixel-only evaluator gives the accuracy with perfect drawing: the gap between it and the
model's accuracy is what better drawing alone (e.g. RL on shape quality) could add; what it
misses is lost in the reasoning.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from jaxgen.data.reasoning import from_grid, parse_plan
from jaxgen.data.shapes_world import Obj, Scene, render
from jaxgen.eval.geneval import score


def render_plan(text: str, canvas: int) -> tuple[Optional[np.ndarray], str]:
    """(uint8[canvas, canvas, 3] or None, reason): the plan's objects painted as the renderer
    paints ground truth (boxes back to whole pixels), or None with why it cannot be drawn."""
    parsed = parse_plan(text)
    if not parsed.ok:
        return None, f"plan does not parse: {parsed.error}"
    objects = []
    for o in parsed.objects:
        if "color" not in o:
            return None, f"plan object '{o['shape']}' names no colour"
        box = tuple(int(round(v)) for v in from_grid(o["box"], canvas))
        objects.append(Obj(shape=o["shape"], color=o["color"], size=o.get("size", "large"),
                           texture=o.get("texture", "plain"), box=box))
    return render(Scene(canvas, objects)), ""


def plan_ceiling(reasonings: list[str], metadata: list[dict], samples_per_prompt: int,
                 canvas: int, roundtrip: Optional[Callable] = None) -> list[dict]:
    """One result per sample (category, prompt, correct, reason) for its plan drawn perfectly.

    reasonings: each sample's reasoning text, `samples_per_prompt` consecutive per prompt of
    `metadata`; roundtrip: uint8[B,H,W,3] -> uint8[B,H,W,3] (the VQ encode -> decode), or None to
    score the renderings as they are.
    """
    drawn = [render_plan(text, canvas) for text in reasonings]
    images = [img for img, _ in drawn if img is not None]
    if images and roundtrip is not None:
        images = list(roundtrip(np.stack(images)))
    images = iter(images)
    results = []
    for i, (img, why) in enumerate(drawn):
        meta = metadata[i // samples_per_prompt]
        if img is None:
            correct, reason = False, why
        else:
            verdict = score(next(images), meta)
            correct, reason = bool(verdict["correct"]), verdict.get("reason", "")
        results.append(dict(category=meta["tag"], prompt=meta["prompt"], correct=correct,
                            reason=reason))
    return results
