"""Malformed drawings made by the renderer: a judge's negatives that need no evaluator.

The SFT policy fails mostly in shape quality (docs/experiments.md, question 4): triangles drawn
as trapezoids, squares with rounded or wobbly sides, an object fading from its colour into
another, pieces missing or stray fragments. This module redraws one object of a ground-truth
scene with such a defect, so a judge can learn "Malformed drawing." from labels that come from
how the image was made (the renderer), never from the pixel evaluator GRPO is measured with.

`corrupt_image(image, plan, rng) -> (uint8 image, kind)`: the object to spoil is chosen at
random among the plan's objects; the others keep their pixels. Kinds (CORRUPTIONS):
  morph     the mask halfway between the object's shape and another one (blurred-mask blend)
  wobble    the outline displaced by a smooth random field of up to 0.3 of the object's side
  blend     the fill fades linearly into another palette colour across the object
  fragment  a random half-plane cut removes 30-55% of the object and a small blob sits nearby
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from jaxgen.data.reasoning import from_grid, parse_plan
from jaxgen.data.shapes_world import COLORS, DEFAULT_SPEC, SHAPES, shape_mask, texture_mask
from jaxgen.errors import UserError

CORRUPTIONS = ("morph", "wobble", "blend", "fragment")


def _object_masks(plan: str, canvas: int) -> list[tuple[dict, np.ndarray]]:
    parsed = parse_plan(plan)
    if not parsed.ok or not parsed.objects:
        raise UserError(f"cannot corrupt a scene whose layout plan does not parse ({plan[:60]!r}: "
                        f"{parsed.error or 'no objects'}); corruptions need ShapesWorld records")
    out = []
    for obj in parsed.objects:
        box = from_grid(obj["box"], canvas)
        out.append((obj, shape_mask(obj["shape"], box, canvas)))
    return out


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(mask.astype(np.float64), sigma)


def _side(box) -> float:
    return max(box[2] - box[0], box[3] - box[1])


def _projection(box, canvas: int, angle: float) -> np.ndarray:
    """float[canvas, canvas]: each pixel centre's offset from the box centre along `angle`."""
    ys, xs = np.mgrid[0:canvas, 0:canvas] + 0.5
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return (xs - cx) * np.cos(angle) + (ys - cy) * np.sin(angle)


# Shape defects: (clean mask, shape name, pixel box, canvas, rng) -> the malformed mask.

def _morph(mask, shape, box, canvas, rng):
    other = [s for s in SHAPES if s != shape][int(rng.integers(len(SHAPES) - 1))]
    side = _side(box)
    t = rng.uniform(0.4, 0.6)
    blend = t * _soft(mask, 0.08 * side) + (1 - t) * _soft(shape_mask(other, box, canvas), 0.08 * side)
    return blend > 0.5


def _wobble(mask, shape, box, canvas, rng):
    side = _side(box)
    # smooth displacement: 4x4 noise upsampled, peak amplitude 0.3 of the side
    coarse = rng.normal(size=(2, 4, 4))
    field = np.stack([ndimage.zoom(c, canvas / 4, order=3)[:canvas, :canvas] for c in coarse])
    field *= 0.3 * side / max(np.abs(field).max(), 1e-6)
    ys, xs = np.mgrid[0:canvas, 0:canvas].astype(np.float64)
    return ndimage.map_coordinates(mask.astype(np.float64), [ys + field[0], xs + field[1]],
                                   order=1, mode="constant") > 0.5


def _fragment(mask, shape, box, canvas, rng):
    angle = rng.uniform(0, 2 * np.pi)
    proj = _projection(box, canvas, angle)
    inside = proj[mask]
    if inside.size == 0:
        return mask
    cut = np.quantile(inside, rng.uniform(0.3, 0.55))
    kept = mask & (proj >= cut)
    # a stray blob on the removed side, a quarter of the side across
    side = _side(box)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    ys, xs = np.mgrid[0:canvas, 0:canvas] + 0.5
    r = max(1.5, 0.12 * side)
    bx = cx - np.cos(angle) * 0.6 * side + rng.normal(0, 0.1 * side)
    by = cy - np.sin(angle) * 0.6 * side + rng.normal(0, 0.1 * side)
    blob = (xs - bx) ** 2 + (ys - by) ** 2 <= r * r
    return kept | blob


_SHAPE_DEFECTS = {"morph": _morph, "wobble": _wobble, "fragment": _fragment}


def corrupt_image(image: np.ndarray, plan: str, rng: np.random.Generator,
                  kinds=CORRUPTIONS, index: int | None = None) -> tuple[np.ndarray, str]:
    """(uint8[H, W, 3], kind): `image` (a ShapesWorld rendering of `plan`) with one object (the
    plan's `index`-th, or one at random) redrawn malformed. Pixels outside that object's old and
    new masks are unchanged."""
    image = np.asarray(image, np.uint8)
    canvas = image.shape[0]
    objects = _object_masks(plan, canvas)
    unknown = set(kinds) - set(CORRUPTIONS)
    if unknown:
        raise UserError(f"unknown corruption(s) {sorted(unknown)}; choose from {CORRUPTIONS}")
    k = int(rng.integers(len(objects))) if index is None else int(index)
    obj, mask = objects[k]
    others = np.zeros_like(mask)
    for j, (_, m) in enumerate(objects):
        if j != k:
            others |= m
    box = from_grid(obj["box"], canvas)
    kind = kinds[int(rng.integers(len(kinds)))]
    colour = np.asarray(COLORS.get(obj.get("color", ""), image[mask].mean(0) if mask.any()
                                   else (128, 128, 128)), np.float64)
    new_mask = mask
    fill = np.broadcast_to(colour, image.shape).copy()
    if kind in _SHAPE_DEFECTS:
        new_mask = _SHAPE_DEFECTS[kind](mask, obj["shape"], box, canvas, rng)
    else:  # blend: same mask, the fill fades into another colour
        names = [c for c in COLORS if c != obj.get("color")]
        target = np.asarray(COLORS[names[int(rng.integers(len(names)))]], np.float64)
        proj = _projection(box, canvas, rng.uniform(0, 2 * np.pi))
        t = np.clip((proj / (_side(box) / 2) + 1) / 2, 0, 1)[..., None] * rng.uniform(0.6, 1.0)
        fill = (1 - t) * colour + t * target
    new_mask = new_mask & ~others
    out = image.copy()
    out[mask & ~others] = np.asarray(DEFAULT_SPEC.background, np.uint8)
    out[new_mask] = np.round(fill[new_mask]).astype(np.uint8)
    texture = obj.get("texture", "plain")
    if texture != "plain":
        dark = new_mask & texture_mask(texture, box, canvas)
        out[dark] = np.round(fill[dark] * DEFAULT_SPEC.texture_shade).astype(np.uint8)
    return out, kind
