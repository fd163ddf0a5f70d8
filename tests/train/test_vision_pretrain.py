"""Vision-tower pretraining on per-patch scene labels (jaxgen/train/vision_pretrain.py)."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxgen.config import load_config
from jaxgen.data.shapes_world import COLOR_NAMES, SHAPES
from jaxgen.errors import UserError
from jaxgen.models import janus
from jaxgen.train import sft, sft_data
from jaxgen.train import vision_pretrain as vp


@pytest.fixture(scope="module")
def conv_tiny():
    mc = janus.config_from_configdict(load_config("janus:tiny"))
    return mc.replace(vision=dataclasses.replace(mc.vision, stem="conv"))


def test_patch_labels_take_the_smallest_box_over_each_patch_centre():
    # 4x4 grid on the 0-1000 plan grid: patch centres at 125, 375, 625, 875.
    plan = ("<obj>large red square</obj><box>(0,0),(1000,500)</box> "
            "<obj>small blue circle</obj><box>(300,0),(500,300)</box> "
            "<obj>triangle</obj><box>(600,600),(700,700)</box>")
    shape, colour = vp.patch_labels(plan, 4)
    square, circle, triangle = (1 + SHAPES.index(s) for s in ("square", "circle", "triangle"))
    red, blue = 1 + COLOR_NAMES.index("red"), 1 + COLOR_NAMES.index("blue")
    want_shape = np.array([[square, circle, square, square],
                           [square, square, square, square],
                           [0, 0, triangle, 0],
                           [0, 0, 0, 0]])
    want_colour = np.array([[red, blue, red, red],
                            [red, red, red, red],
                            [0, 0, 0, 0],  # the triangle names no colour
                            [0, 0, 0, 0]])
    np.testing.assert_array_equal(shape.reshape(4, 4), want_shape)
    np.testing.assert_array_equal(colour.reshape(4, 4), want_colour)
    with pytest.raises(UserError, match="layout plan"):
        vp.patch_labels("<obj>red blob</obj>", 4)


def test_pretraining_teaches_the_tower_the_patch_labels(conv_tiny):
    """A few dozen steps lower the per-patch loss on the training records well below its
    starting value; a tower the judge does not read through is refused."""
    mc = conv_tiny
    records = sft_data.procedural_records(40, 0, "train", 64)
    pixels, shapes, colours = vp.patch_label_arrays(mc, records)
    side = mc.vision.image_size // mc.vision.patch_size
    assert pixels.shape == (40, mc.vision.image_size, mc.vision.image_size, 3)
    assert shapes.shape == colours.shape == (40, side * side) and shapes.max() > 0
    loss_fn, heads = vp.make_loss_fn(mc)
    start = janus.init_params(mc, jax.random.PRNGKey(0))["vision_model"]
    settings = vp.PretrainSettings(steps=60, batch_size=16, learning_rate=3e-3,
                                   heldout_fraction=0.1)
    tower, metrics = vp.pretrain_tower(mc, records, settings, start)
    head_params = heads.init(jax.random.PRNGKey(1), np.zeros((1, 1, mc.vision.hidden_size)))
    before, _ = loss_fn({"tower": start, "heads": head_params["params"]}, pixels[:36], shapes[:36],
                        colours[:36])
    assert metrics["loss"] < 0.5 * float(before)
    assert 0.0 <= metrics["heldout_shape_acc_objects"] <= 1.0
    assert jax.tree.map(np.shape, tower) == jax.tree.map(np.shape, start)
    with pytest.raises(UserError, match="understanding_input=siglip"):
        vp.pretrain_tower(mc.replace(understanding_input="vq_codes"), records, settings)


def test_sft_keeps_the_pretrained_tower_for_a_resumed_run(conv_tiny, tmp_path, monkeypatch):
    """The SFT init takes the pretrained tower, trained once per workdir: a second start reads
    it back from <workdir>/vision_pretrain.msgpack instead of training again."""
    mc = conv_tiny
    config = load_config("sft:tiny", ["--config.vision_pretrain.steps=4",
                                      "--config.vision_pretrain.batch_size=4",
                                      "--config.data.num_examples=12"])
    base_init = lambda r: janus.init_params(mc, r)  # noqa: E731
    init = sft.with_pretrained_tower(base_init, config, mc, tmp_path)
    assert (tmp_path / sft.VISION_PRETRAIN_FILE).exists()
    first = init(jax.random.PRNGKey(5))
    plain = base_init(jax.random.PRNGKey(5))
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), first["vision_model"],
                           plain["vision_model"])
    assert any(jax.tree.leaves(changed))  # the tower was trained
    np.testing.assert_array_equal(first["language_model"]["embed_tokens"]["embedding"],
                                  plain["language_model"]["embed_tokens"]["embedding"])

    def no_training(*a, **k):
        raise AssertionError("the tower was trained again")
    monkeypatch.setattr(vp, "pretrain_tower", no_training)
    again = sft.with_pretrained_tower(base_init, config, mc, tmp_path)(jax.random.PRNGKey(5))
    jax.tree.map(np.testing.assert_array_equal, again["vision_model"], first["vision_model"])
