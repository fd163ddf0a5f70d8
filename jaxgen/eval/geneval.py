"""GenEval-style (and T2I-CompBench-style) scoring of one image against prompt metadata.

Rules (GenEval's, with attribute-aware matching):
- an include item {class, count, color?, size?, texture?} is met when at least `count` detected
  objects have that class and every attribute it names (GenEval checks the colour of the
  `count` most confident detections of the class; here attributes are part of the match, so a
  prompt may name two objects of one class with different colours);
- an exclude item {class, count, ...} fails when `count` or more matching objects are found
  (counting prompts exclude count + 1, so counts are exact);
- a position [relation, j] on item i holds when every one of item i's `count` most confident
  (largest) matches has `relation` to every match of item j, under GenEval's rule
  (`jaxgen.data.shapes_world.relative_position`, threshold 0.1, cosine 0.5).
`correct` is the GenEval verdict (all checks pass); `score` is the fraction of checks that
pass (a T2I-CompBench-like soft score). The image is all it looks at.
"""

from __future__ import annotations

import numpy as np

from jaxgen.data.shapes_world import relative_position
from jaxgen.eval.detector import detect

ATTRIBUTES = ("color", "size", "texture")


def _matches(det, item: dict) -> bool:
    if det.shape != item["class"]:
        return False
    return all(getattr(det, key) == item[key] for key in ATTRIBUTES if item.get(key))


def _phrase(item: dict) -> str:
    words = [item.get("size"), item.get("color"), item.get("texture"), item["class"]]
    return " ".join(w for w in words if w)


def score_detections(detections: list, metadata: dict) -> dict:
    """dict(correct, reason, score, checks, passed) of detections against GenEval metadata."""
    include = metadata["include"]
    failures, checks = [], 0
    found = [[d for d in detections if _matches(d, item)] for item in include]
    for item, cands in zip(include, found):
        checks += 1
        need = int(item.get("count", 1))
        if len(cands) < need:
            failures.append(f"expected {need} {_phrase(item)}, found {len(cands)}")
    for item in metadata.get("exclude", []):
        checks += 1
        n = sum(_matches(d, item) for d in detections)
        if n >= int(item["count"]):
            failures.append(f"expected fewer than {item['count']} {_phrase(item)}, found {n}")
    for k, item in enumerate(include):
        if "position" not in item:
            continue
        checks += 1
        rel, ref = item["position"]
        targets = found[k][: int(item.get("count", 1))]
        refs = found[int(ref)]
        if not targets or not refs:
            failures.append(f"cannot check '{_phrase(item)} {rel} {_phrase(include[ref])}': "
                            "object missing")
            continue
        bad = [(t, r) for t in targets for r in refs if rel not in relative_position(t.box_xyxy,
                                                                                    r.box_xyxy)]
        if bad:
            t, r = bad[0]
            got = sorted(relative_position(t.box_xyxy, r.box_xyxy)) or ["no clear relation"]
            failures.append(f"expected {_phrase(item)} {rel} {_phrase(include[ref])}, "
                            f"found {', '.join(got)}")
    passed = checks - len(failures)
    return {"correct": not failures, "reason": failures[0] if failures else "ok",
            "score": passed / checks if checks else 1.0, "checks": checks, "passed": passed}


def score(image: np.ndarray, metadata: dict) -> dict:
    """Score a uint8[H, W, 3] image against GenEval-style `metadata` (see module docstring)."""
    return score_detections(detect(image), metadata)


def satisfies(image: np.ndarray, metadata: dict) -> bool:
    """GenEval's verdict alone: whether the image shows everything `metadata` asks for."""
    return bool(score(image, metadata)["correct"])
