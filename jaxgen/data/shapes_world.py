"""ShapesWorld: procedural scenes of flat coloured shapes, their scene graphs and renderer.

A scene is a list of `Obj` (shape, colour, size class, texture, pixel box) on a plain canvas of
`canvas` x `canvas` pixels. Scenes are drawn from GenEval-style metadata (see `prompts.py`) by
`scene_for(metadata, rng, canvas)`: the objects named by the metadata with their counts and
attributes, placed without overlap so that every stated relation holds with a margin under the
GenEval position rule (`relative_position`), and every other pairwise relation is unambiguous
(so a scene graph extracted back from pixels is stable under small perturbations).

Vocabulary (defaults of `WorldSpec`, chosen so a 64 px image survives an 8x8-code VQ):
  shapes   square, circle, triangle (apex up)
  colours  red, yellow, green, cyan, blue, purple (flat, saturated, hues >= 40 degrees apart)
  sizes    small (0.22 of the canvas side: 14 px at 64), large (0.36: 23 px at 64)
  textures plain, striped (horizontal bands of a darker shade), dotted (darker dots)

Public entry points: `render_for(metadata, rng, size) -> uint8[size, size, 3]`,
`render(scene) -> uint8 image`, `scene_graph(scene) -> dict`,
`relative_position(box_a, box_b) -> set[str]` (a random prompt with its scene:
`prompts.sample_prompt`).
"""

from __future__ import annotations

import colorsys
import dataclasses

import numpy as np

from jaxgen.errors import UserError

SHAPES = ("square", "circle", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "yellow": (235, 200, 30),
    "green": (40, 170, 60),
    "cyan": (30, 190, 200),
    "blue": (40, 80, 220),
    "purple": (150, 60, 200),
}
COLOR_NAMES = tuple(COLORS)
SIZES = ("small", "large")
TEXTURES = ("plain", "striped", "dotted")
RELATIONS = ("left of", "right of", "above", "below")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# (colour, shape) pairs held out of training: train scenes never render them, and the test
# split's prompts ask for them (prompts.py)
HELDOUT_COLOR_SHAPE = frozenset({("red", "triangle"), ("green", "circle"), ("blue", "square")})

# GenEval's position rule: offsets shrink by this fraction of the two boxes' sizes and a
# relation holds when the remaining unit offset's component exceeds RELATION_COSINE.
POSITION_THRESHOLD = 0.1
RELATION_COSINE = 0.5


@dataclasses.dataclass(frozen=True)
class WorldSpec:
    """Geometry and look of the world, in fractions of the canvas side where it scales."""
    background: tuple = (240, 240, 240)
    small_frac: float = 0.22
    large_frac: float = 0.36
    gap_frac: float = 0.06  # minimum free space between two boxes
    margin_frac: float = 0.03  # minimum free space to the canvas border
    texture_period_frac: float = 0.078  # width of one stripe / dot (5 px at 64; period 10 avoids JPEG 8 px blocks)
    texture_shade: float = 0.55  # darker shade = colour * this
    relation_margin: float = 0.12  # unit-offset components stay this far from RELATION_COSINE
    place_candidates: int = 256  # random positions tried at once per object
    place_restarts: int = 60
    crowded_objects: int = 3  # scenes with this many objects draw unspecified sizes as small


DEFAULT_SPEC = WorldSpec()


@dataclasses.dataclass
class Obj:
    shape: str
    color: str
    size: str
    texture: str = "plain"
    box: tuple = (0, 0, 0, 0)  # x0, y0, x1, y1 in pixels, x1/y1 exclusive

    def describe(self) -> str:
        """Full description, e.g. 'large red striped circle' (texture only when not plain)."""
        tex = "" if self.texture == "plain" else f"{self.texture} "
        return f"{self.size} {self.color} {tex}{self.shape}"

    def to_dict(self) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size,
                "texture": self.texture, "box": [int(v) for v in self.box]}


@dataclasses.dataclass
class Scene:
    canvas: int
    objects: list
    spec: WorldSpec = DEFAULT_SPEC


def side_pixels(size: str, canvas: int, spec: WorldSpec = DEFAULT_SPEC) -> int:
    frac = spec.small_frac if size == "small" else spec.large_frac
    return max(3, int(round(frac * canvas)))


def hue_of(rgb) -> float:
    """Hue in degrees of an RGB triple (0-255)."""
    r, g, b = (c / 255.0 for c in rgb)
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360.0


PALETTE_HUES = {name: hue_of(rgb) for name, rgb in COLORS.items()}


# ----------------------------------------------------------------------------- geometry

def relation_components(box_a, box_b):
    """GenEval's revised unit offset (dx, dy) of A relative to B, or None when they coincide."""
    a = np.asarray(box_a, np.float64).reshape(2, 2)
    b = np.asarray(box_b, np.float64).reshape(2, 2)
    offset = a.mean(0) - b.mean(0)
    dims = np.abs(a[1] - a[0]) + np.abs(b[1] - b[0])
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return None
    return revised / np.linalg.norm(offset)


def relative_position(box_a, box_b, cosine: float = RELATION_COSINE) -> set:
    """Relations of box A to box B under the GenEval rule (image y grows downwards)."""
    d = relation_components(box_a, box_b)
    if d is None:
        return set()
    dx, dy = d
    rels = set()
    if dx < -cosine:
        rels.add("left of")
    if dx > cosine:
        rels.add("right of")
    if dy < -cosine:
        rels.add("above")
    if dy > cosine:
        rels.add("below")
    return rels


def _robust_pair(box_a, box_b, margin: float) -> bool:
    d = relation_components(box_a, box_b)
    if d is None:
        return False
    return bool(np.all(np.abs(np.abs(d) - RELATION_COSINE) > margin))


def _holds(box_a, rel, box_b, margin: float) -> bool:
    return rel in relative_position(box_a, box_b, RELATION_COSINE + margin)


# ----------------------------------------------------------------------------- rendering

def shape_mask(shape: str, box, canvas: int) -> np.ndarray:
    """bool[canvas, canvas]: pixels (sampled at their centres) covered by `shape` in `box`."""
    x0, y0, x1, y1 = box
    ys, xs = np.mgrid[0:canvas, 0:canvas]
    xc, yc = xs + 0.5, ys + 0.5
    inside = (xc >= x0) & (xc < x1) & (yc >= y0) & (yc < y1)
    if shape == "square":
        return inside
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    if shape == "circle":
        return ((xc - cx) / (w / 2.0)) ** 2 + ((yc - cy) / (h / 2.0)) ** 2 <= 1.0
    if shape == "triangle":
        half_width = (yc - y0) / h * (w / 2.0)
        return inside & (np.abs(xc - cx) <= half_width)
    raise UserError(f"unknown shape {shape!r}; ShapesWorld shapes are {SHAPES}")


def texture_mask(texture: str, box, canvas: int, spec: WorldSpec = DEFAULT_SPEC) -> np.ndarray:
    """bool[canvas, canvas]: where the darker shade of a textured object goes."""
    if texture == "plain":
        return np.zeros((canvas, canvas), bool)
    period = max(2, int(round(spec.texture_period_frac * canvas)))
    ys, xs = np.mgrid[0:canvas, 0:canvas]
    row_band = ((ys - int(box[1])) // period) % 2 == 1
    if texture == "striped":
        return row_band
    if texture == "dotted":
        col_band = ((xs - int(box[0])) // period) % 2 == 1
        return row_band & col_band
    raise UserError(f"unknown texture {texture!r}; ShapesWorld textures are {TEXTURES}")


def render(scene: Scene) -> np.ndarray:
    """uint8[canvas, canvas, 3]: the scene's objects painted in order on the background."""
    spec, n = scene.spec, scene.canvas
    image = np.empty((n, n, 3), np.uint8)
    image[:] = np.asarray(spec.background, np.uint8)
    for obj in scene.objects:
        mask = shape_mask(obj.shape, obj.box, n)
        base = np.asarray(COLORS[obj.color], np.float64)
        image[mask] = base.astype(np.uint8)
        dark = mask & texture_mask(obj.texture, obj.box, n, spec)
        image[dark] = np.round(base * spec.texture_shade).astype(np.uint8)
    return image


# ----------------------------------------------------------------------------- placement

def _free(candidates_k4: np.ndarray, placed: list, gap: float) -> np.ndarray:
    ok = np.ones(len(candidates_k4), bool)
    for b in placed:
        sep_x = (candidates_k4[:, 0] >= b[2] + gap) | (candidates_k4[:, 2] + gap <= b[0])
        sep_y = (candidates_k4[:, 1] >= b[3] + gap) | (candidates_k4[:, 3] + gap <= b[1])
        ok &= sep_x | sep_y
    return ok


def place(sides: list, constraints: list, canvas: int, rng: np.random.Generator,
          spec: WorldSpec = DEFAULT_SPEC) -> list:
    """Boxes for objects of the given side lengths, without overlap.

    constraints: (i, rel, j) meaning object i is `rel` object j, held with a margin.
    Every pair ends up with an unambiguous GenEval relation set. Raises UserError when the
    objects cannot fit (canvas too small for the requested objects).
    """
    gap = spec.gap_frac * canvas
    margin = int(np.ceil(spec.margin_frac * canvas))
    for _ in range(spec.place_restarts):
        boxes: list = []
        for i, side in enumerate(sides):
            hi = canvas - side - margin
            if hi < margin:
                raise UserError(f"canvas {canvas} px is too small for a {side} px object; "
                                "use a larger image_size")
            xy = rng.integers(margin, hi + 1, size=(spec.place_candidates, 2))
            cand = np.concatenate([xy, xy + side], axis=1)
            ok = _free(cand, boxes, gap)
            found = None
            for k in np.flatnonzero(ok):
                box = tuple(int(v) for v in cand[k])
                trial = boxes + [box]
                good = all(_robust_pair(box, b, spec.relation_margin) for b in boxes)
                for (a, rel, c) in constraints:
                    if max(a, c) == i and good:
                        good = _holds(trial[a], rel, trial[c], spec.relation_margin)
                if good:
                    found = box
                    break
            if found is None:
                break
            boxes.append(found)
        if len(boxes) == len(sides):
            return boxes
    raise UserError(f"could not place {len(sides)} objects with constraints {constraints} on a "
                    f"{canvas} px canvas; use fewer/smaller objects or a larger image_size")


# ----------------------------------------------------------------------------- scenes

def scene_for(metadata: dict, rng: np.random.Generator, canvas: int,
              spec: WorldSpec = DEFAULT_SPEC, avoid_heldout: bool = False,
              heldout_pairs=None) -> Scene:
    """A scene satisfying GenEval-style `metadata` (include items with class/count/attributes
    and positions). Unspecified colours/sizes are drawn at random (one draw per include item);
    with `avoid_heldout`, colours never form a held-out (colour, shape) pair."""
    if heldout_pairs is None:
        heldout_pairs = HELDOUT_COLOR_SHAPE
    objects, first_index = [], []
    total = sum(int(item.get("count", 1)) for item in metadata["include"])
    for item in metadata["include"]:
        shape = item["class"]
        if shape not in SHAPES:
            raise UserError(f"unknown class {shape!r} in metadata; ShapesWorld classes are {SHAPES}")
        color = item.get("color")
        if color is None:
            choices = [c for c in COLOR_NAMES
                       if not (avoid_heldout and (c, shape) in heldout_pairs)]
            color = choices[rng.integers(len(choices))]
        # crowded scenes use small objects so they fit and stay separable
        size = item.get("size") or ("small" if total >= spec.crowded_objects
                                    else SIZES[rng.integers(len(SIZES))])
        texture = item.get("texture", "plain")
        first_index.append(len(objects))
        for _ in range(int(item.get("count", 1))):
            objects.append(Obj(shape, color, size, texture))
    constraints = []
    for k, item in enumerate(metadata["include"]):
        if "position" in item:
            rel, ref = item["position"]
            for a in range(first_index[k], first_index[k] + int(item.get("count", 1))):
                ref_count = int(metadata["include"][ref].get("count", 1))
                for c in range(first_index[ref], first_index[ref] + ref_count):
                    constraints.append((a, rel, c))
    sides = [side_pixels(o.size, canvas, spec) for o in objects]
    boxes = place(sides, constraints, canvas, rng, spec)
    for o, b in zip(objects, boxes):
        o.box = b
    return Scene(canvas=canvas, objects=objects, spec=spec)


def scene_graph(scene: Scene) -> dict:
    """Complete scene graph: every object and every ordered pair's GenEval relations."""
    objs = [o.to_dict() for o in scene.objects]
    rels = []
    for i, a in enumerate(scene.objects):
        for j, b in enumerate(scene.objects):
            if i != j:
                for rel in sorted(relative_position(a.box, b.box)):
                    rels.append([i, rel, j])
    return {"canvas": scene.canvas, "objects": objs, "relations": rels, "complete": True}


def render_for(metadata: dict, rng: np.random.Generator, size: int = 64,
               avoid_heldout: bool = False) -> np.ndarray:
    """uint8[size, size, 3]: a ground-truth rendering of any prompt's metadata."""
    return render(scene_for(metadata, rng, size, avoid_heldout=avoid_heldout))

