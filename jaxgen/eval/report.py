"""Per-category result tables (GenEval overall = mean of the per-category accuracies)."""

from __future__ import annotations

import collections

from jaxgen.data.prompts import CATEGORIES


def category_table(results) -> tuple:
    """(markdown str, dict) from results: iterable of dicts with 'category' and 'correct'
    (optional 'score': soft score, 'sg_iou'). dict maps category -> {'accuracy', 'n', 'score'}
    plus 'overall' (mean accuracy over the categories present) and 'overall_samples' (accuracy
    over all samples)."""
    by = collections.defaultdict(list)
    for r in results:
        by[r["category"]].append(r)
    order = [c for c in CATEGORIES if c in by] + sorted(c for c in by if c not in CATEGORIES)
    table = {}
    lines = ["| category | n | accuracy | score |", "|---|---|---|---|"]
    for cat in order:
        rs = by[cat]
        acc = sum(bool(r["correct"]) for r in rs) / len(rs)
        soft = sum(float(r.get("score", r["correct"])) for r in rs) / len(rs)
        table[cat] = {"accuracy": acc, "n": len(rs), "score": soft}
        lines.append(f"| {cat} | {len(rs)} | {acc:.3f} | {soft:.3f} |")
    n_all = sum(len(v) for v in by.values())
    overall = sum(v["accuracy"] for v in table.values()) / len(table) if table else 0.0
    samples = (sum(bool(r["correct"]) for v in by.values() for r in v) / n_all) if n_all else 0.0
    table["overall"] = overall
    table["overall_samples"] = samples
    lines.append(f"| **overall** (mean of categories) | {n_all} | {overall:.3f} | |")
    return "\n".join(lines), table
