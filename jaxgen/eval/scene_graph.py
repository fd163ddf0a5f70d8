"""Scene graphs from pixels and LAION-SG (CompSG) style scores: SG-IoU, Entity-IoU, Relation-IoU.

Graph format (also what `jaxgen.data.shapes_world.scene_graph` and `prompts.prompt_graph`
produce): {"objects": [{"shape", "color"?, "size"?, "texture"?, "box"?}], "relations":
[[i, relation, j], ...] (object i is `relation` object j), "complete": bool}. A complete graph
lists every ordered pair's relations; an incomplete one (a prompt's graph) only the stated ones,
and unspecified attributes are wildcards.

Scores of a predicted graph against a ground-truth graph, after matching entities (an injective
map gt -> pred maximising matched entities, then matched triplets; a pred entity matches a gt one
when it has every attribute the gt entity names):
  Entity-IoU   = matched entities / (|gt| + |pred| - matched)
  SG-IoU       = matched triplets / (|gt triplets| + |pred triplets| - matched), a triplet
                 (i, rel, j) matching (m(i), rel, m(j)); against an incomplete gt graph only pred
                 triplets between entities matched to gt-related pairs count
  Relation-IoU = multiset IoU of the predicates (relation words) of those same triplet sets
Each is 1.0 when both sides are empty.
"""

from __future__ import annotations

import collections
import itertools

import numpy as np
from scipy.optimize import linear_sum_assignment

from jaxgen.data.shapes_world import relative_position
from jaxgen.eval.detector import detect

ATTRS = ("color", "size", "texture")
BRUTE_FORCE_MAX = 5  # gt graphs up to this many entities are matched exhaustively


def extract(image: np.ndarray) -> dict:
    """Complete scene graph of an image from the detector (pixels only)."""
    dets = detect(image)
    objects = [d.to_dict() for d in dets]
    rels = []
    for i, a in enumerate(dets):
        for j, b in enumerate(dets):
            if i != j:
                for rel in sorted(relative_position(a.box_xyxy, b.box_xyxy)):
                    rels.append([i, rel, j])
    return {"canvas": int(min(image.shape[:2])), "objects": objects, "relations": rels,
            "complete": True}


def _compatible(gt_obj: dict, pred_obj: dict) -> bool:
    if gt_obj.get("shape") != pred_obj.get("shape"):
        return False
    return all(pred_obj.get(k) == gt_obj[k] for k in ATTRS if gt_obj.get(k) is not None)


def _triplets(graph: dict) -> list:
    return [(int(i), r, int(j)) for i, r, j in graph.get("relations", [])]


def _score_mapping(mapping: dict, gt_t: list, pred_t: list, complete: bool):
    """(matched gt triplets, pred triplets considered) under an entity mapping gt -> pred."""
    pred_set = collections.Counter(pred_t)
    matched = sum(1 for (i, r, j) in gt_t
                  if i in mapping and j in mapping and pred_set[(mapping[i], r, mapping[j])] > 0)
    if complete:
        considered = pred_t
    else:
        pairs = {(mapping[i], mapping[j]) for (i, _, j) in gt_t if i in mapping and j in mapping}
        considered = [t for t in pred_t if (t[0], t[2]) in pairs]
    return matched, considered


def _iou_counter(a: collections.Counter, b: collections.Counter) -> float:
    inter = sum((a & b).values())
    union = sum((a | b).values())
    return 1.0 if union == 0 else inter / union


def sg_scores(pred_graph: dict, gt_graph: dict) -> dict:
    """dict(sg_iou, entity_iou, relation_iou) of a predicted graph against a ground truth."""
    gt_o, pred_o = gt_graph.get("objects", []), pred_graph.get("objects", [])
    gt_t, pred_t = _triplets(gt_graph), _triplets(pred_graph)
    complete = bool(gt_graph.get("complete", False))
    compat = np.array([[_compatible(g, p) for p in pred_o] for g in gt_o], bool).reshape(
        len(gt_o), len(pred_o))
    best = None  # (entities, triplets, -considered) and mapping
    if len(gt_o) <= BRUTE_FORCE_MAX and len(pred_o) <= BRUTE_FORCE_MAX + 3:
        options = [[None] + [p for p in range(len(pred_o)) if compat[g, p]]
                   for g in range(len(gt_o))]
        for choice in itertools.product(*options):
            used = [c for c in choice if c is not None]
            if len(used) != len(set(used)):
                continue
            mapping = {g: c for g, c in enumerate(choice) if c is not None}
            matched, considered = _score_mapping(mapping, gt_t, pred_t, complete)
            key = (len(mapping), matched, -len(considered))
            if best is None or key > best[0]:
                best = (key, mapping, matched, considered)
    else:
        rows, cols = linear_sum_assignment(-compat.astype(np.float64))
        mapping = {int(g): int(p) for g, p in zip(rows, cols) if compat[g, p]}
        matched, considered = _score_mapping(mapping, gt_t, pred_t, complete)
        best = ((len(mapping), matched, -len(considered)), mapping, matched, considered)
    _, mapping, matched, considered = best
    n_ent = len(mapping)
    ent_union = len(gt_o) + len(pred_o) - n_ent
    entity_iou = 1.0 if ent_union == 0 else n_ent / ent_union
    t_union = len(gt_t) + len(considered) - matched
    sg_iou = 1.0 if t_union == 0 else matched / t_union
    relation_iou = _iou_counter(collections.Counter(r for _, r, _ in gt_t),
                                collections.Counter(r for _, r, _ in considered))
    return {"sg_iou": float(sg_iou), "entity_iou": float(entity_iou),
            "relation_iou": float(relation_iou)}


def score_image(image: np.ndarray, gt_graph: dict) -> dict:
    """sg_scores of the graph extracted from `image` against `gt_graph`."""
    return sg_scores(extract(image), gt_graph)
