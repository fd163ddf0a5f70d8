"""Plan ceiling: a sample's layout plan drawn by the renderer and scored (no models)."""

import numpy as np
import pytest

from jaxgen.data import prompts
from jaxgen.data.reasoning import layout_plan
from jaxgen.data.prompts import sample_prompt
from jaxgen.data.shapes_world import render
from jaxgen.eval.plan_ceiling import plan_ceiling, render_plan


def _scenes(n_per_category=3, seed=0):
    rng = np.random.default_rng(seed)
    return [sample_prompt(rng, "train", c) for c in prompts.CATEGORIES for _ in range(n_per_category)]


def test_a_ground_truth_plan_renders_its_scene_pixel_for_pixel():
    for _, _, scene in _scenes():
        image, why = render_plan(layout_plan(scene), scene.canvas)
        assert why == ""
        np.testing.assert_array_equal(image, render(scene))  # textures and triangles included


def test_true_plans_score_correct_and_wrong_or_broken_plans_do_not():
    # the evaluator reads textures only where the VQ keeps them; cb_texture is scored like the rest
    scenes = [s for s in _scenes() if s[1]["tag"] != "cb_texture"]
    metadata = [m for _, m, _ in scenes]
    true_plans = [layout_plan(scene) for _, _, scene in scenes]
    results = plan_ceiling(true_plans, metadata, samples_per_prompt=1, canvas=64)
    assert all(r["correct"] for r in results), [r for r in results if not r["correct"]]
    assert [r["category"] for r in results] == [m["tag"] for m in metadata]

    one = next(s for s in scenes if s[1]["tag"] == "colors")  # "a photo of a <colour> <shape>"
    plan = layout_plan(one[2])
    colour = one[2].objects[0].color
    other = "blue" if colour != "blue" else "red"
    wrong_colour = plan.replace(colour, other)
    no_colour = plan.replace(f"{colour} ", "")
    broken = plan.replace("</box>", "", 1)
    results = plan_ceiling([plan, wrong_colour, no_colour, broken], [one[1]],
                           samples_per_prompt=4, canvas=64)
    assert [r["correct"] for r in results] == [True, False, False, False]
    assert "names no colour" in results[2]["reason"]
    assert results[3]["reason"].startswith("plan does not parse")


def test_drawable_plans_go_through_the_roundtrip_in_one_batch():
    scenes = [s for s in _scenes(1) if s[1]["tag"] == "single_object"]
    metadata = [scenes[0][1]]
    calls = []

    def blank(images):  # a tokenizer that loses everything
        calls.append(images.shape)
        return np.full_like(images, 240)

    plans = [layout_plan(scenes[0][2]), "not a plan", layout_plan(scenes[0][2])]
    results = plan_ceiling(plans, metadata, samples_per_prompt=3, canvas=64, roundtrip=blank)
    assert calls == [(2, 64, 64, 3)]
    assert not any(r["correct"] for r in results)
    identity = plan_ceiling(plans, metadata, 3, 64, roundtrip=lambda x: x)
    assert [r["correct"] for r in identity] == [True, False, True]


@pytest.mark.parametrize("text", ["", "<obj>large red hexagon</obj><box>(0,0),(10,10)</box>",
                                  "<obj>large red circle</obj><box>(500,0),(100,10)</box>"])
def test_undrawable_plans_give_a_reason_not_an_exception(text):
    image, why = render_plan(text, 64)
    assert image is None and why.startswith("plan does not parse")
