"""Renderer-made malformed drawings (jaxgen/data/corruptions.py) and the judge rows built on them."""

import numpy as np
import pytest

from jaxgen.data import judge
from jaxgen.data.corruptions import CORRUPTIONS, corrupt_image
from jaxgen.data.reasoning import layout_plan
from jaxgen.data.shapes_world import (COLORS, DEFAULT_SPEC, Obj, Scene, render, shape_mask)
from jaxgen.errors import UserError

BACKGROUND = np.asarray(DEFAULT_SPEC.background, np.uint8)


def _scene():
    # two objects far apart: a red square (the one spoiled when index 0 is drawn) and a blue
    # triangle, 64 px canvas, boxes on exact grid multiples so the plan round-trips exactly
    objs = [Obj("square", "red", "large", box=(4, 4, 28, 28)),
            Obj("triangle", "blue", "large", box=(36, 36, 60, 60))]
    return Scene(canvas=64, objects=objs)


def _spoiled(kind, seed):
    scene = _scene()
    image, plan = render(scene), layout_plan(scene)
    out, got = corrupt_image(image, plan, np.random.default_rng(seed), kinds=(kind,))
    assert got == kind
    return scene, image, out


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_one_object_changes_and_the_rest_keeps_its_pixels(kind):
    for seed in range(6):
        scene, image, out = _spoiled(kind, seed)
        masks = [shape_mask(o.shape, o.box, 64) for o in scene.objects]
        changed = np.any(out != image, axis=-1)
        assert changed.sum() >= 8, (kind, seed, changed.sum())  # visibly spoiled
        # exactly one object's surroundings changed: the changed pixels lie within 12 px of one box
        near = []
        for o in scene.objects:
            x0, y0, x1, y1 = o.box
            ys, xs = np.nonzero(changed)
            near.append(np.all((xs >= x0 - 12) & (xs < x1 + 12) & (ys >= y0 - 12) & (ys < y1 + 12)))
        assert sum(near) >= 1, (kind, seed)
        # untouched object keeps every pixel
        spoiled = int(np.argmax([np.any(changed & m) for m in masks]))
        other = masks[1 - spoiled]
        assert np.array_equal(out[other], image[other])
        # every pixel is background, the object's colour or (blend) a mix of palette colours
        if kind != "blend":
            colour = np.asarray(COLORS[scene.objects[spoiled].color], np.uint8)
            new = out[changed]
            assert np.all(np.all(new == BACKGROUND, -1) | np.all(new == colour, -1))


@pytest.mark.parametrize("kind", ("morph", "wobble", "fragment"))
def test_shape_defects_keep_most_of_the_object_but_not_its_outline(kind):
    ious = []
    for seed in range(8):
        scene, image, out = _spoiled(kind, seed)
        for o in scene.objects:
            clean = shape_mask(o.shape, o.box, 64)
            drawn = np.all(out == np.asarray(COLORS[o.color], np.uint8), -1)
            if np.any(drawn != clean):
                ious.append((clean & drawn).sum() / (clean | drawn).sum())
    assert len(ious) == 8
    assert 0.3 < min(ious) and max(ious) < 0.97, ious


def test_blend_fades_into_another_colour():
    scene, image, out = _spoiled("blend", 3)
    changed = np.any(out != image, axis=-1)
    colours = {tuple(c) for c in out[changed]}
    assert len(colours) > 10  # a gradient, not a recolouring


def test_deterministic_and_clear_errors():
    scene = _scene()
    image, plan = render(scene), layout_plan(scene)
    a = corrupt_image(image, plan, np.random.default_rng(7))
    b = corrupt_image(image, plan, np.random.default_rng(7))
    assert a[1] == b[1] and np.array_equal(a[0], b[0])
    with pytest.raises(UserError, match="layout plan"):
        corrupt_image(image, "a red square", np.random.default_rng(0))
    with pytest.raises(UserError, match="unknown corruption"):
        corrupt_image(image, plan, np.random.default_rng(0), kinds=("melt",))


def test_corrupted_examples_are_malformed_describe_rows():
    scene = _scene()
    rec = {"image": render(scene), "plan": layout_plan(scene),
           "metadata": {"prompt": "a photo of a square and a triangle", "tag": "two_object"}}
    rows = judge.corrupted_examples([rec] * 200, np.random.default_rng(1), fraction=0.3)
    assert 40 <= len(rows) <= 80  # ~60 expected
    assert {r["answer"] for r in rows} == {judge.DEGRADED_ANSWER}
    assert {r["question"] for r in rows} == {judge.DESCRIBE_QUESTION}
    assert {r["perturbation"] for r in rows} == {f"corrupt_{k}" for k in CORRUPTIONS}
    assert all(not np.array_equal(r["image"], rec["image"]) for r in rows)
    assert judge.corrupted_examples([rec], np.random.default_rng(1), fraction=0.0) == []
