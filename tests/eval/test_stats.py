"""Paired bootstrap of the difference in held-out accuracy between two models."""

import numpy as np
import pytest

from jaxgen.eval.compare import accuracy_by_category
from jaxgen.eval.stats import describe_difference, paired_difference


def _results(correct, categories):
    return [dict(category=c, correct=bool(x)) for x, c in zip(correct, categories)]


def test_difference_is_the_change_in_overall_accuracy():
    """Point estimate = overall(other) - overall(base), overall being the mean over categories
    (unequal category sizes make it differ from the mean over samples)."""
    rng = np.random.default_rng(0)
    cats = ["a"] * 20 + ["b"] * 60  # 10 and 30 prompts of 2 samples
    base = _results(rng.random(80) < 0.3, cats)
    other = _results(rng.random(80) < 0.5, cats)
    d = paired_difference(base, other, samples_per_prompt=2)
    want = accuracy_by_category(other)["overall"] - accuracy_by_category(base)["overall"]
    assert d["difference"] == pytest.approx(want, abs=1e-12)
    assert d["low"] < d["difference"] < d["high"] and d["num_prompts"] == 40 and d["level"] == 0.95


def test_identical_models_differ_by_exactly_zero():
    cats = ["a", "a", "b", "b"] * 5
    base = _results([1, 0, 0, 1] * 5, cats)
    d = paired_difference(base, base, samples_per_prompt=2)
    assert d["difference"] == d["low"] == d["high"] == d["std_error"] == 0.0


def test_bootstrap_error_matches_the_analytic_error_of_the_category_mean():
    """Independent coin flips, 1 sample per prompt: the resampled standard error equals
    sqrt(sum_c var_c / n_c) / C (var_c: the per-prompt differences' variance) within 5%."""
    rng = np.random.default_rng(1)
    cats = ["a"] * 300 + ["b"] * 100
    base_c = rng.random(400) < 0.3
    other_c = rng.random(400) < 0.4
    d = paired_difference(_results(base_c, cats), _results(other_c, cats), 1,
                          num_resamples=8000, seed=2)
    diff = other_c.astype(float) - base_c.astype(float)
    analytic = np.sqrt(diff[:300].var() / 300 + diff[300:].var() / 100) / 2
    assert d["std_error"] == pytest.approx(analytic, rel=0.05)


def test_pairing_detects_a_small_consistent_gain():
    """Other = base plus 12 of 200 prompts fixed: +6 points, a change two independent binomial
    errors would not separate from zero (+-9.8 points at 95%); the paired interval excludes it."""
    rng = np.random.default_rng(3)
    base_c = rng.random(200) < 0.5
    other_c = base_c.copy()
    other_c[np.flatnonzero(~base_c)[:12]] = True
    cats = ["a"] * 200
    d = paired_difference(_results(base_c, cats), _results(other_c, cats), 1)
    assert d["difference"] == pytest.approx(0.06)
    assert d["low"] > 0
    line = describe_difference("GRPO - SFT", d)
    assert line.startswith("GRPO - SFT: +6.0 points overall (95% interval +")


def test_mismatched_inputs_are_rejected():
    base = _results([1, 0, 1, 0], ["a", "a", "b", "b"])
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference(base, _results([1, 0, 1, 0], ["b", "b", "a", "a"]), 2)
    with pytest.raises(ValueError, match="whole groups"):
        paired_difference(base, base, 3)
    with pytest.raises(ValueError, match="level"):
        paired_difference(base, base, 2, level=95)
