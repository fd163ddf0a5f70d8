"""Object crops (jaxgen/data/crops.py) and the crop judge's training rows (judge task 'crop')."""

import numpy as np

from jaxgen.data import judge
from jaxgen.data.crops import CROP_SCALE, crop_uint8, crop_window
from jaxgen.data.reasoning import layout_plan
from jaxgen.data.shapes_world import DEFAULT_SPEC, Obj, Scene, render

BACKGROUND = np.asarray(DEFAULT_SPEC.background, np.uint8)


def test_window_is_centred_scaled_and_kept_inside_the_canvas():
    win = np.asarray(crop_window(np.array([[20, 20, 30, 30], [0, 0, 10, 10], [50, 40, 64, 60],
                                           [0, 0, 64, 64]], np.float32), 64))
    np.testing.assert_allclose(win[0], [25 - 8, 25 - 8, 16])  # centre 25, side 1.6 x 10
    np.testing.assert_allclose(win[1], [0, 0, 16])  # would start at -3: shifted in
    np.testing.assert_allclose(win[2], [64 - 32, 64 - 32, 32])  # side from the longer (20 px) edge
    np.testing.assert_allclose(win[3], [0, 0, 64])  # never larger than the canvas


def test_a_square_fills_the_expected_share_of_its_crop():
    img = np.zeros((1, 64, 64, 3), np.uint8)
    img[0, 20:30, 10:20] = 255
    crop = crop_uint8(img, np.array([[10, 20, 20, 30]], np.float32), 32)
    assert crop.shape == (1, 32, 32, 3)
    # a 10 px square in a 16 px window: (1 / 1.6)^2 of the crop, at its centre
    share = (crop[0, ..., 0] > 127).mean()
    np.testing.assert_allclose(share, 1 / CROP_SCALE ** 2, atol=1 / 32)
    assert crop[0, 16, 16, 0] == 255 and crop[0, 0, 0, 0] == 0


def _scene():
    objs = [Obj("square", "red", "large", box=(4, 4, 28, 28)),
            Obj("triangle", "blue", "small", box=(40, 40, 54, 54)),
            Obj("circle", "green", "small", texture="striped", box=(40, 4, 54, 18))]
    scene = Scene(canvas=64, objects=objs)
    return {"image": render(scene), "plan": layout_plan(scene),
            "metadata": {"tag": "two_object", "prompt": "a photo of a red square"}}


def test_crop_rows_name_every_object_without_its_size():
    rows = judge.crop_examples([_scene()], np.random.default_rng(0), 64)
    assert [r["answer"] for r in rows] == ["red square", "blue triangle", "green striped circle"]
    assert {r["question"] for r in rows} == {judge.CROP_QUESTION}
    for r in rows:  # each object, zoomed: its colour covers the crop's centre
        centre = r["image"][28:36, 28:36].reshape(-1, 3)
        assert (np.abs(centre.astype(int) - BACKGROUND).sum(-1) > 60).mean() > 0.5


def test_corrupted_and_empty_rows_and_the_prepare_hook():
    rng = np.random.default_rng(3)
    seen = []

    def prepare(scenes):
        seen.append(scenes.shape)
        return scenes

    rows = judge.crop_examples([_scene()] * 20, rng, 64, corrupted_fraction=0.5,
                               empty_fraction=1.0, prepare=prepare)
    kinds = [r["perturbation"] for r in rows]
    spoiled = [r for r in rows if r["perturbation"].startswith("crop_") and
               r["perturbation"] != "crop_empty"]
    empty = [r for r in rows if r["perturbation"] == "crop_empty"]
    assert 15 <= len(spoiled) <= 45 and all(r["answer"] == judge.DEGRADED_ANSWER for r in spoiled)
    assert len(empty) == 20 and all(r["answer"] == judge.EMPTY_ANSWER for r in empty)
    assert kinds.count("crop") == 60 - len(spoiled)
    for r in empty:  # the window misses every object: only background
        assert (np.abs(r["image"].astype(int) - BACKGROUND).sum(-1) < 30).all()
    assert seen == [(len(rows), 64, 64, 3)]  # whole scenes, once, before cropping


def test_corruption_kinds_and_blur():
    rows = judge.crop_examples([_scene()] * 10, np.random.default_rng(4), 64,
                               corrupted_fraction=0.6, kinds=("wobble",))
    assert {r["perturbation"] for r in rows} == {"crop", "crop_wobble"}
    sharp = judge.crop_examples([_scene()], np.random.default_rng(5), 64)
    soft = judge.crop_examples([_scene()], np.random.default_rng(5), 64, blur=(1.5, 1.5))
    for a, b in zip(sharp, soft):
        assert a["answer"] == b["answer"]
        # blur softens edges: fewer distinct steep gradients, same mean colour (to rounding)
        grad = lambda x: np.abs(np.diff(x.astype(float), axis=0)).max()
        assert grad(b["image"]) < grad(a["image"])
        np.testing.assert_allclose(b["image"].mean(), a["image"].mean(), atol=3.0)
