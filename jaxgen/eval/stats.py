"""How sure a difference in held-out accuracy is: paired bootstrap over prompts.

Two models evaluated on the same prompts with the same sampling seeds are paired: a prompt that
is easy for one tends to be easy for the other, so resampling prompts (both models' samples of a
prompt together) gives a tighter and more honest interval for the difference than two separate
binomial errors. Prompts are resampled within each category, and every resample's overall is the
mean over categories, as GenEval's overall is (`compare.accuracy_by_category`).
"""

from __future__ import annotations

import collections

import numpy as np


def _per_prompt_correct(results: list[dict], samples_per_prompt: int) -> tuple[list, np.ndarray]:
    """(category of each prompt, float64[P] share of its samples judged correct)."""
    if len(results) % samples_per_prompt:
        raise ValueError(f"{len(results)} results are not whole groups of "
                         f"{samples_per_prompt} samples per prompt")
    correct = np.asarray([bool(r["correct"]) for r in results], np.float64)
    cats = [r["category"] for r in results[::samples_per_prompt]]
    return cats, correct.reshape(-1, samples_per_prompt).mean(axis=1)


def paired_difference(base: list[dict], other: list[dict], samples_per_prompt: int,
                      num_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Overall accuracy of `other` minus `base` and its paired bootstrap interval.

    base, other: per-sample results ({'category', 'correct'}) in the same prompt order, each
    prompt's `samples_per_prompt` samples consecutive (as `compare.score_samples` writes them).
    Returns {'difference', 'low', 'high', 'level', 'std_error', 'num_prompts'}; the bounds are
    percentiles of `num_resamples` resampled differences.
    """
    if not 0 < level < 1 or num_resamples < 2:
        raise ValueError(f"need 0 < level < 1 and num_resamples >= 2, got {level}, {num_resamples}")
    cats, a = _per_prompt_correct(base, samples_per_prompt)
    other_cats, b = _per_prompt_correct(other, samples_per_prompt)
    if cats != other_cats:
        raise ValueError("the two result lists are not over the same prompts in the same order")
    rows = collections.defaultdict(list)
    for i, c in enumerate(cats):
        rows[c].append(i)
    rng = np.random.default_rng(seed)
    diff = b - a
    point = float(np.mean([diff[idx].mean() for idx in rows.values()]))
    per_category = []
    for idx in rows.values():
        idx = np.asarray(idx)
        draws = rng.integers(0, len(idx), (num_resamples, len(idx)))
        per_category.append(diff[idx[draws]].mean(axis=1))
    resampled = np.mean(per_category, axis=0)  # [num_resamples]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return dict(difference=point, low=float(low), high=float(high), level=level,
                std_error=float(resampled.std(ddof=1)), num_prompts=len(cats))


def describe_difference(label: str, d: dict) -> str:
    """One report line, in accuracy points; label e.g. 'GRPO - SFT'."""
    return (f"{label}: {100 * d['difference']:+.1f} points overall "
            f"({100 * d['level']:.0f}% interval {100 * d['low']:+.1f} to {100 * d['high']:+.1f}; "
            f"paired bootstrap over {d['num_prompts']} prompts)")
