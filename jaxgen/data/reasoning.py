"""Reasoning text for SFT: a GoT-R1-style layout plan and a ReasonGen-R1-style detailed caption.

Layout plan: one item per object, separated by a single space,
    <obj>large red circle</obj><box>(65,488),(582,982)</box>
with the box as (x0,y0),(x1,y1) on a 0-1000 grid (x right, y down). `parse_plan(text)` turns a
plan back into objects and boxes; a malformed plan gives `PlanParse(ok=False, error=...)`, never
an exception. Detailed caption: where each object is (3x3 grid words) and the prompt's relations.
"""

from __future__ import annotations

import dataclasses
import re

from jaxgen.data.shapes_world import COLOR_NAMES, SHAPES, SIZES, TEXTURES, Scene

GRID = 1000  # plan coordinates run 0..GRID
_ITEM = re.compile(r"<obj>([^<>]*)</obj><box>\((\d{1,4}),(\d{1,4})\),\((\d{1,4}),(\d{1,4})\)</box>")


def to_grid(box, canvas: int) -> list:
    return [int(round(v * GRID / canvas)) for v in box]


def from_grid(box, canvas: int) -> list:
    return [v * canvas / GRID for v in box]


def layout_plan(scene: Scene) -> str:
    """GoT-R1-style plan of a scene: every object with its box on the 0-1000 grid."""
    items = []
    for o in scene.objects:
        x0, y0, x1, y1 = to_grid(o.box, scene.canvas)
        items.append(f"<obj>{o.describe()}</obj><box>({x0},{y0}),({x1},{y1})</box>")
    return " ".join(items)


@dataclasses.dataclass
class PlanParse:
    ok: bool
    objects: list  # dicts: shape, color?, size?, texture?, box (0-1000 grid, [x0, y0, x1, y1])
    error: str = ""


def parse_description(text: str):
    """Attributes of '[size] [color] [texture] shape', or None if it is not one."""
    words = text.split()
    if not words or words[-1] not in SHAPES:
        return None
    attrs = {"shape": words[-1]}
    for w in words[:-1]:
        key = ("size" if w in SIZES else "color" if w in COLOR_NAMES
               else "texture" if w in TEXTURES else None)
        if key is None or key in attrs:
            return None
        attrs[key] = w
    return attrs


def parse_plan(text) -> PlanParse:
    """Objects and boxes of a layout plan; malformed input gives ok=False with a reason."""
    if not isinstance(text, str):
        return PlanParse(False, [], f"plan must be text, got {type(text).__name__}")
    body = text.strip()
    if not body:
        return PlanParse(False, [], "empty plan")
    objects, pos = [], 0
    for m in _ITEM.finditer(body):
        if body[pos:m.start()].strip():
            return PlanParse(False, [], f"unexpected text {body[pos:m.start()].strip()[:40]!r}")
        pos = m.end()
        attrs = parse_description(m.group(1))
        if attrs is None:
            return PlanParse(False, [], f"cannot read object {m.group(1)!r}")
        box = [int(m.group(i)) for i in range(2, 6)]
        if max(box) > GRID or box[0] >= box[2] or box[1] >= box[3]:
            return PlanParse(False, [], f"invalid box {box} (need 0 <= x0 < x1 <= {GRID})")
        attrs["box"] = box
        objects.append(attrs)
    if body[pos:].strip():
        return PlanParse(False, [], f"unexpected text {body[pos:].strip()[:40]!r}")
    if not objects:
        return PlanParse(False, [], "no <obj>...</obj><box>...</box> item found")
    return PlanParse(True, objects)


_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "center", "right")


def location_phrase(box, canvas: int) -> str:
    cx = (box[0] + box[2]) / 2 / canvas
    cy = (box[1] + box[3]) / 2 / canvas
    row, col = _ROWS[min(int(cy * 3), 2)], _COLS[min(int(cx * 3), 2)]
    if row == "middle" and col == "center":
        return "in the center"
    if row == "middle":
        return f"on the {col}"
    if col == "center":
        return f"at the {row}"
    return f"in the {row} {col}"


def detailed_caption(scene: Scene, metadata: dict) -> str:
    """ReasonGen-R1-style detailed caption: objects with locations, then stated relations."""
    parts = [f"a {o.describe()} {location_phrase(o.box, scene.canvas)}" for o in scene.objects]
    if len(parts) == 1:
        listing = parts[0]
    else:
        listing = ", ".join(parts[:-1]) + " and " + parts[-1]
    n = len(scene.objects)
    noun = "object" if n == 1 else "objects"
    text = f"The image shows {n} {noun} on a plain light background: {listing}."
    first, k = [], 0
    for item in metadata["include"]:
        first.append(k)
        k += int(item.get("count", 1))
    for i, item in enumerate(metadata["include"]):
        if "position" in item:
            rel, ref = item["position"]
            a, b = scene.objects[first[i]], scene.objects[first[ref]]
            text += f" The {a.describe()} is {rel} the {b.describe()}."
    return text
