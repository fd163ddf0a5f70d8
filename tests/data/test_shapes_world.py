"""ShapesWorld renderer, prompts, held-out splits and reasoning text."""

import numpy as np
import pytest

from jaxgen.data import prompts, reasoning, shapes_world as sw
from jaxgen.errors import UserError


def test_vocabulary_sizes():
    assert len(sw.SHAPES) >= 3 and len(sw.COLORS) >= 6 and len(sw.SIZES) >= 2
    assert {"striped", "dotted"} <= set(sw.TEXTURES)
    hues = sorted(sw.PALETTE_HUES.values())
    gaps = np.diff(hues + [hues[0] + 360])
    assert gaps.min() >= 40  # colours stay apart under colour shifts


def test_render_pixels_match_scene():
    scene = sw.Scene(64, [sw.Obj("square", "red", "large", box=(5, 5, 28, 28)),
                          sw.Obj("circle", "blue", "small", box=(40, 40, 54, 54))])
    img = sw.render(scene)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert tuple(img[10, 10]) == sw.COLORS["red"]
    assert tuple(img[47, 47]) == sw.COLORS["blue"]
    assert tuple(img[0, 0]) == sw.DEFAULT_SPEC.background
    assert (np.all(img == sw.COLORS["red"], axis=-1)).sum() == 23 * 23
    # a circle covers ~pi/4 of its box
    n_blue = (np.all(img == sw.COLORS["blue"], axis=-1)).sum()
    assert abs(n_blue / 14**2 - np.pi / 4) < 0.05


def test_textures_rendered_darker():
    obj = sw.Obj("square", "green", "large", "striped", box=(10, 10, 33, 33))
    img = sw.render(sw.Scene(64, [obj]))
    dark = np.round(np.asarray(sw.COLORS["green"]) * sw.DEFAULT_SPEC.texture_shade)
    frac = (np.all(img == dark, axis=-1)).sum() / 23**2
    assert 0.3 < frac < 0.6


def test_relative_position_geneval_rule():
    a, b = (0, 20, 10, 30), (30, 20, 40, 30)
    assert sw.relative_position(a, b) == {"left of"}
    assert sw.relative_position(b, a) == {"right of"}
    assert sw.relative_position((20, 0, 30, 10), (20, 30, 30, 40)) == {"above"}
    assert sw.relative_position(a, a) == set()
    # diagonal: both relations
    assert sw.relative_position((0, 0, 10, 10), (30, 30, 40, 40)) == {"left of", "above"}


@pytest.mark.parametrize("category", prompts.CATEGORIES)
def test_scenes_satisfy_their_metadata(category):
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for _ in range(10):
            prompt, meta, scene = prompts.sample_prompt(rng, split, category)
            assert prompt == meta["prompt"] == prompts.describe(meta)
            assert meta["tag"] == category
            counts = {}
            for o in scene.objects:
                counts[o.shape] = counts.get(o.shape, 0) + 1
            for item in meta["include"]:
                match = [o for o in scene.objects if o.shape == item["class"]
                         and all(getattr(o, k) == item[k] for k in ("color", "size", "texture")
                                 if item.get(k))]
                assert len(match) >= item["count"]
                if "position" in item:
                    rel, ref = item["position"]
                    refs = [o for o in scene.objects if o.shape == meta["include"][ref]["class"]]
                    assert any(rel in sw.relative_position(m.box, r.box)
                               for m in match for r in refs)
            for ex in meta["exclude"]:
                assert counts.get(ex["class"], 0) < ex["count"]
            # objects never overlap
            boxes = [o.box for o in scene.objects]
            for i in range(len(boxes)):
                for j in range(i + 1, len(boxes)):
                    a, b = boxes[i], boxes[j]
                    assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_heldout_split():
    rng = np.random.default_rng(2)
    for category in prompts.CATEGORIES:
        for _ in range(30):
            _, meta, scene = prompts.sample_prompt(rng, "train", category)
            assert not prompts.is_heldout(meta)
            # train renderings never show a held-out colour-shape pair
            assert all((o.color, o.shape) not in sw.HELDOUT_COLOR_SHAPE
                       for o in scene.objects)
            _, meta, _ = prompts.sample_prompt(rng, "test", category)
            assert prompts.is_heldout(meta) == (category in prompts.CAN_HOLD_OUT)
    with pytest.raises(UserError, match="unknown split"):
        prompts.sample_metadata(rng, "dev")
    with pytest.raises(UserError, match="unknown category"):
        prompts.sample_metadata(rng, "train", "nope")


def test_heldout_prompts_never_in_train_prompt_set():
    rng = np.random.default_rng(3)
    train = {prompts.sample_metadata(rng, "train", c)["prompt"]
             for c in prompts.CAN_HOLD_OUT for _ in range(200)}
    test = {prompts.sample_metadata(rng, "test", c)["prompt"]
            for c in prompts.CAN_HOLD_OUT for _ in range(50)}
    assert train.isdisjoint(test)


def test_render_for_256_and_64():
    rng = np.random.default_rng(4)
    meta = prompts.sample_metadata(rng, "test", "cb_complex")
    for size in (64, 256):
        img = sw.render_for(meta, rng, size)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8


def test_too_many_objects_is_a_user_error():
    meta = {"tag": "counting", "include": [{"class": "square", "count": 6, "size": "large"}],
            "exclude": []}
    with pytest.raises(UserError, match="could not place|too small"):
        sw.scene_for(meta, np.random.default_rng(0), 64)


def test_perturb_metadata_changes_the_prompt():
    rng = np.random.default_rng(5)
    for category in prompts.CATEGORIES:
        meta = prompts.sample_metadata(rng, "train", category)
        for kind in prompts.PERTURBATIONS:
            new = prompts.perturb_metadata(meta, rng, kind)
            if new is not None:
                assert new["prompt"] != meta["prompt"]


def test_layout_plan_round_trip():
    rng = np.random.default_rng(6)
    for category in prompts.CATEGORIES:
        _, meta, scene = prompts.sample_prompt(rng, "train", category)
        plan = reasoning.layout_plan(scene)
        parsed = reasoning.parse_plan(plan)
        assert parsed.ok, parsed.error
        assert len(parsed.objects) == len(scene.objects)
        for o, p in zip(scene.objects, parsed.objects):
            assert p["box"] == reasoning.to_grid(o.box, scene.canvas)
            assert p["shape"] == o.shape and p["color"] == o.color and p["size"] == o.size
            assert np.allclose(reasoning.from_grid(p["box"], 64), o.box, atol=0.04)


@pytest.mark.parametrize("bad", [
    "", "   ", None, 42, "hello",
    "<obj>red circle</obj>",
    "<obj>red circle</obj><box>(1,2),(3)</box>",
    "<obj>red circle</obj><box>(10,20),(5,30)</box>",
    "<obj>red circle</obj><box>(10,20),(50,3000)</box>",
    "<obj>red blob</obj><box>(10,20),(50,30)</box>",
    "<obj>red red circle</obj><box>(10,20),(50,30)</box>",
    "<obj>red circle</obj><box>(10,20),(50,30)</box> trailing words",
    "junk <obj>red circle</obj><box>(10,20),(50,30)</box>",
    "<obj><obj>red circle</obj><box>(10,20),(50,30)</box>",
])
def test_malformed_plans_fail_cleanly(bad):
    parsed = reasoning.parse_plan(bad)
    assert not parsed.ok and parsed.error and parsed.objects == []


def test_detailed_caption_mentions_objects_and_relations():
    rng = np.random.default_rng(7)
    _, meta, scene = prompts.sample_prompt(rng, "train", "cb_spatial")
    cap = reasoning.detailed_caption(scene, meta)
    for o in scene.objects:
        assert o.describe() in cap
    rel = meta["include"][1]["position"][0]
    assert f"is {rel} the" in cap
