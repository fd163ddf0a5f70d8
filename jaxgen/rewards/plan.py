"""GoT-R1 layout plans: parsing, drawing on a blank canvas, and rule checks against metadata.

Plan syntax (GoT-R1): free text with objects and boxes on a 0..grid grid (grid = 1000):
    A <obj>red circle</obj> <box>(65,488),(582,982)</box> left of <obj>blue square</obj> <box>...
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np

PLAN_GRID = 1000
_PAIR = re.compile(
    r"<obj>(?P<name>[^<]*?)</obj>\s*<box>\s*\(\s*(?P<x1>-?\d+(?:\.\d+)?)\s*,\s*(?P<y1>-?\d+(?:\.\d+)?)"
    r"\s*\)\s*,\s*\(\s*(?P<x2>-?\d+(?:\.\d+)?)\s*,\s*(?P<y2>-?\d+(?:\.\d+)?)\s*\)\s*</box>")

# Named colours for drawing plans (RGB); unknown names are drawn grey.
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 180), "orange": (245, 140, 30), "black": (20, 20, 20),
    "white": (250, 250, 250), "gray": (128, 128, 128), "grey": (128, 128, 128),
    "pink": (240, 130, 180), "brown": (130, 80, 40), "cyan": (40, 200, 220),
}
_UNKNOWN_COLOUR = (150, 150, 150)


@dataclasses.dataclass(frozen=True)
class PlannedObject:
    name: str
    box: tuple  # (x1, y1, x2, y2) on the plan grid


def parse_plan(text: str) -> list[PlannedObject]:
    """Every well-formed `<obj>name</obj> <box>(x1,y1),(x2,y2)</box>` pair, in order."""
    out = []
    for m in _PAIR.finditer(text or ""):
        box = tuple(float(m.group(k)) for k in ("x1", "y1", "x2", "y2"))
        out.append(PlannedObject(m.group("name").strip().lower(), box))
    return out


def plan_is_well_formed(text: str, grid: int = PLAN_GRID) -> bool:
    """At least one object; every <obj> has its box; boxes inside the grid with x1<x2, y1<y2."""
    objs = parse_plan(text)
    if not objs:
        return False
    if text.count("<obj>") != len(objs) or text.count("<box>") != len(objs):
        return False
    if text.count("</obj>") != len(objs) or text.count("</box>") != len(objs):
        return False
    for o in objs:
        x1, y1, x2, y2 = o.box
        if not (0 <= x1 < x2 <= grid and 0 <= y1 < y2 <= grid) or not o.name:
            return False
    return True


def to_pixels(box, width: int, height: int, grid: int = PLAN_GRID):
    x1, y1, x2, y2 = box
    return (x1 * width / grid, y1 * height / grid, x2 * width / grid, y2 * height / grid)


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def boxes_apart(a, b, min_gap: float = 0.0) -> bool:
    """True when boxes a and b (x1, y1, x2, y2) are separated by at least `min_gap` along x or y
    (min_gap 0: their interiors do not overlap; touching edges are apart)."""
    gap_x = max(a[0], b[0]) - min(a[2], b[2])
    gap_y = max(a[1], b[1]) - min(a[3], b[3])
    return max(gap_x, gap_y) >= min_gap


def layout_is_disjoint(objects, min_gap: float = 0.0) -> bool:
    """Every pair of planned boxes is apart (`boxes_apart`); a one-object plan is."""
    return all(boxes_apart(a.box, b.box, min_gap)
               for i, a in enumerate(objects) for b in objects[i + 1:])


def draw_plan(objects, size: int, grid: int = PLAN_GRID) -> np.ndarray:
    """uint8[size, size, 3]: white canvas, each planned box filled with its named colour."""
    canvas = np.full((size, size, 3), 255, np.uint8)
    for o in objects:
        colour = next((COLOURS[w] for w in o.name.split() if w in COLOURS), _UNKNOWN_COLOUR)
        x1, y1, x2, y2 = (int(round(v)) for v in to_pixels(o.box, size, size, grid))
        x1, y1 = max(x1, 0), max(y1, 0)
        x2, y2 = min(max(x2, x1 + 1), size), min(max(y2, y1 + 1), size)
        canvas[y1:y2, x1:x2] = colour
    return canvas


def name_words(text: str) -> set:
    """The lower-case words of an object name, with plural endings also dropped."""
    words = set(re.findall(r"[a-z]+", text.lower()))
    return words | {w[:-1] for w in words if w.endswith("s")} | \
        {w[:-2] for w in words if w.endswith("es")}


def name_matches(name: str, cls: str, colour: str | None = None) -> bool:
    """True when the planned name mentions the class (plural ok) and the colour, if given."""
    words = name_words(name)
    if cls.lower() not in words:
        return False
    return colour is None or colour.lower() in words


def metadata_dict(metadata) -> dict:
    return json.loads(metadata) if isinstance(metadata, str) else dict(metadata or {})


def _centre(box):
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def relation_holds(rel: str, a_box, b_box) -> bool:
    """Is box a `rel` box b? Image coordinates: y grows downward."""
    (ax, ay), (bx, by) = _centre(a_box), _centre(b_box)
    rel = rel.lower().replace("_", " ").strip()
    if rel in ("left of", "left"):
        return ax < bx
    if rel in ("right of", "right"):
        return ax > bx
    if rel in ("above", "on top of", "top of"):
        return ay < by
    if rel in ("below", "under", "beneath", "bottom of"):
        return ay > by
    return False


def plan_matches_prompt(objects, metadata) -> float:
    """Fraction of the metadata's checks the plan satisfies: per included entry, the right count
    of planned objects of that class (and colour); per positional entry, the relation between
    the two objects' planned centres. 0 for an empty plan."""
    md = metadata_dict(metadata)
    include = md.get("include", [])
    if not objects or not include:
        return 0.0
    checks = []
    for entry in include:
        hits = [o for o in objects if name_matches(o.name, entry["class"], entry.get("color"))]
        checks.append(len(hits) == int(entry.get("count", 1)))
        if entry.get("position"):
            rel, idx = entry["position"]
            other = include[int(idx)]
            others = [o for o in objects if name_matches(o.name, other["class"], other.get("color"))]
            checks.append(bool(hits and others and relation_holds(rel, hits[0].box, others[0].box)))
    for entry in md.get("exclude", []):
        hits = [o for o in objects if name_matches(o.name, entry["class"], entry.get("color"))]
        checks.append(len(hits) < int(entry.get("count", 1)))
    return float(np.mean(checks))
