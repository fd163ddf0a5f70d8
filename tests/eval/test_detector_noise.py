"""The pixel-only evaluator finds no ShapesWorld objects in images that are not ShapesWorld scenes.

An untrained generator decodes near-random VQ codes into smeary, irregular, multi-coloured blobs
on a pale background. Before the detector's shape-quality test every colour blob was reported as
a triangle, square or circle, and GenEval scoring found "a triangle" in ~70% of such images.
The images here are made without a trained model (seeded):
- smears: bent chains of 2-4 elongated elliptic parts in neighbouring palette hues and different
  shades, blended into one hue / brightness gradient;
- fields: blobs cut from a smooth random field, coloured by a second smooth field that wanders
  across the palette hues and shaded by a third;
- a randomly initialised VQ decoder (jaxgen.models.vq) fed random codes: saturated colour noise
  over the whole canvas.
Measured on these seeds (without the test -> with it), GenEval accuracy single_object /
two_object: smears + fields (200 images) 64% / 44% -> 1% / 0%, 4.4 -> 0.06 detections per
image; random decoder (48 images) 100% / 92% -> 6% / 0%, 16.6 -> 0.13 detections per image.
Asserted: accuracy <= 5% (single_object on the random decoder's ~20-blob images: <= 10%, with
<= 2% of its blobs accepted), the blobs are still found (and rejected), clean renderings of the
same prompts are 100% correct with no component rejected, and each test of the rule rejects
the shape it is meant to.
"""

import jax
import numpy as np
import pytest
from scipy import ndimage

from jaxgen.data import prompts, shapes_world as sw
from jaxgen.eval import detector, geneval
from jaxgen.models import vq
from jaxgen.models.config import VQConfig
from jaxgen.sampling.generate import pixels_to_uint8

N_IMAGES = 100
SIZE = 64
MAX_NOISE_ACCURACY = 0.05  # GenEval accuracy allowed on images with no ShapesWorld object
MAX_NOISE_DETECTIONS = 0.25  # accepted detections per noise image, on average
MIN_NOISE_CANDIDATES = 2.0  # rejected components per noise image: the blobs are still seen
N_VQ_IMAGES = 48
MAX_VQ_NOISE_BLOB_ACCEPTANCE = 0.02  # of the candidate blobs in random-decoder colour noise
MAX_VQ_NOISE_SINGLE_ACCURACY = 0.1  # ~20 candidate blobs per image (measured 3.6% on 192)
PALETTE = np.array([sw.COLORS[c] for c in sw.COLOR_NAMES], np.float64)
BACKGROUND = 238.0  # pale, slightly tinted background of a decoded image
SHADE = (0.45, 1.0)  # brightness factor of a smear part or field region (dark smears)
FRAME = 4.0  # pixels: decoded images fade to the background towards their border


def _background(rng, size):
    img = np.broadcast_to(BACKGROUND + rng.uniform(-5, 5, size=3), (size, size, 3)).copy()
    return img + ndimage.gaussian_filter(rng.normal(0, 12, (size, size, 3)), (3, 3, 0))


def _frame(size):
    """f32[size, size, 1]: 0 at the border rising to 1 at FRAME pixels in (a decoder's pale
    frame: its blobs are seldom cut by the canvas edge)."""
    edge = np.minimum(np.arange(size) + 0.5, size - 0.5 - np.arange(size))
    ramp = np.clip(edge / FRAME, 0, 1)
    return np.minimum(ramp[:, None], ramp[None, :])[..., None]


def _finish(rng, img):
    img = ndimage.gaussian_filter(img, (0.6, 0.6, 0)) + rng.normal(0, 2, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def smear_image(rng, size=SIZE):
    """uint8[size, size, 3]: 4-8 irregular smears, each a bent chain of 2-4 elongated elliptic
    parts of neighbouring palette hues and different shades, blended into one gradient."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    img = _background(rng, size)
    for _ in range(rng.integers(4, 9)):
        y, x = rng.uniform(3, size - 3, 2)
        hue = rng.integers(len(PALETTE))
        angle = rng.uniform(0, 2 * np.pi)
        weight = np.zeros((size, size))
        colour = np.zeros((size, size, 3))
        for part in range(rng.integers(2, 5)):
            major = rng.uniform(2.0, 5.0)
            minor = major * rng.uniform(0.3, 0.65)
            if part:
                angle += rng.normal(0, 0.8)  # the chain bends
                step = rng.uniform(1.0, 1.8) * major
                y, x = y + step * np.sin(angle), x + step * np.cos(angle)
                if rng.random() < 0.7:
                    hue = (hue + rng.choice([-1, 1])) % len(PALETTE)
            u = (xs - x) * np.cos(angle) + (ys - y) * np.sin(angle)
            v = -(xs - x) * np.sin(angle) + (ys - y) * np.cos(angle)
            w = np.exp(-0.5 * ((u / major) ** 2 + (v / minor) ** 2))
            weight += w
            colour += w[..., None] * PALETTE[hue] * rng.uniform(*SHADE)
        colour /= np.maximum(weight, 1e-9)[..., None]
        alpha = np.clip((weight - 0.35) * 4.0, 0, 1)[..., None] * _frame(size)  # soft outline
        img = img * (1 - alpha) + colour * alpha
    return _finish(rng, img)


def field_image(rng, size=SIZE):
    """uint8[size, size, 3]: blobs where a smooth random field is high, coloured by a smooth
    field wandering across the palette hues and shaded by a third smooth field."""
    img = _background(rng, size)
    sigma = rng.uniform(2.5, 4.0)
    shape_field = ndimage.gaussian_filter(rng.normal(size=(size, size)), sigma)
    alpha = np.clip((shape_field / shape_field.std() - rng.uniform(0.9, 1.3)) * 3.0, 0, 1)
    alpha = alpha[..., None] * _frame(size)
    hue_field = ndimage.gaussian_filter(rng.normal(size=(size, size)), 2 * sigma)
    hue = (hue_field / hue_field.std() * 1.5 + rng.uniform(0, len(PALETTE))) % len(PALETTE)
    lo = np.floor(hue).astype(int)
    t = (hue - lo)[..., None]
    colour = PALETTE[lo % len(PALETTE)] * (1 - t) + PALETTE[(lo + 1) % len(PALETTE)] * t
    shade_field = ndimage.gaussian_filter(rng.normal(size=(size, size)), sigma)
    colour *= np.clip(0.75 + 0.25 * shade_field / shade_field.std(), *SHADE)[..., None]
    return _finish(rng, img * (1 - alpha) + colour * alpha)


def random_vq_images(n: int, seed: int) -> np.ndarray:
    """uint8[n, 64, 64, 3]: a randomly initialised small VQ decoder (8x8 codes) on random codes."""
    config = VQConfig(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32,
                      channel_multiplier=(1, 1, 1, 1), num_res_blocks=1, image_size=SIZE,
                      projection_dim=64, image_token_embed_dim=64)
    model = vq.VQModel(config)
    k_codes, k_init = jax.random.split(jax.random.PRNGKey(seed))
    codes = jax.random.randint(k_codes, (n, config.num_image_tokens), 0, config.num_embeddings)
    params = jax.jit(lambda k: model.init(k, codes[:1], method=vq.VQModel.decode))(k_init)
    decode = jax.jit(lambda p, c: model.apply(p, c, method=vq.VQModel.decode))
    return pixels_to_uint8(decode(params, codes))


def _noise_figures(images, seed):
    """(GenEval accuracy per category, accepted per image, rejected per image); every image is
    scored against a random single_object and a random two_object prompt."""
    rng = np.random.default_rng(seed)
    found = [detector.detect_all(im) for im in images]
    accuracy = {}
    for category in ("single_object", "two_object"):
        metas = [prompts.sample_metadata(rng, "test", category) for _ in images]
        # geneval.score(image, meta) is score_detections(detect(image), meta)
        accuracy[category] = np.mean([geneval.score_detections(accepted, m)["correct"]
                                      for (accepted, _), m in zip(found, metas)])
    return (accuracy, np.mean([len(a) for a, _ in found]), np.mean([len(r) for _, r in found]))


def test_untrained_like_images_score_near_zero():
    rng = np.random.default_rng(0)
    images = ([smear_image(rng) for _ in range(N_IMAGES)]
              + [field_image(rng) for _ in range(N_IMAGES)])
    accuracy, accepted, rejected = _noise_figures(images, seed=1)
    for category, acc in accuracy.items():
        assert acc <= MAX_NOISE_ACCURACY, (category, acc)
    assert accepted <= MAX_NOISE_DETECTIONS, accepted
    assert rejected >= MIN_NOISE_CANDIDATES, rejected


def test_random_vq_decoder_images_score_near_zero():
    # colour noise over the whole canvas: ~20 candidate blobs per image, so even a small
    # per-blob false-accept rate shows in a few images; the bound is on the blobs
    images = random_vq_images(N_VQ_IMAGES, seed=0)
    assert images.shape == (N_VQ_IMAGES, SIZE, SIZE, 3)
    accuracy, accepted, rejected = _noise_figures(list(images), seed=2)
    assert accepted / (accepted + rejected) <= MAX_VQ_NOISE_BLOB_ACCEPTANCE, (accepted, rejected)
    assert accuracy["two_object"] <= MAX_NOISE_ACCURACY, accuracy
    assert accuracy["single_object"] <= MAX_VQ_NOISE_SINGLE_ACCURACY, accuracy


def test_clean_renderings_of_the_same_prompts_pass_untouched():
    rng = np.random.default_rng(1)
    for category in ("single_object", "two_object"):
        for _ in range(N_IMAGES):
            meta = prompts.sample_metadata(rng, "test", category)
            image = sw.render_for(meta, rng, SIZE)
            accepted, rejected = detector.detect_all(image)
            assert rejected == [], (meta["prompt"], [(d.shape, d.rejected_by) for d in rejected])
            assert geneval.score_detections(accepted, meta)["correct"], meta["prompt"]


_YS, _XS = np.mgrid[0:SIZE, 0:SIZE] + 0.5  # pixel centres
_RED = sw.COLORS["red"]
_BOX = (_XS >= 20) & (_XS < 40) & (_YS >= 20) & (_YS < 40)
_CASES = {  # name: (mask, colour, test it fails or "" when it is a ShapesWorld object)
    "disc": ((_XS - 30) ** 2 + (_YS - 30) ** 2 <= 8 ** 2, _RED, ""),
    "tiny disc": ((_XS - 30) ** 2 + (_YS - 30) ** 2 <= 4.5 ** 2, _RED, "size"),
    "flat ellipse": (((_XS - 30) / 12) ** 2 + ((_YS - 30) / 6) ** 2 <= 1, _RED, "aspect"),
    "right triangle": (_BOX & (_YS - 20 >= _XS - 20), _RED, "symmetry"),
    "apex-down triangle": (_BOX & (np.abs(_XS - 30) <= (40 - _YS) / 2), _RED, "moments"),
    "hourglass": (_BOX & (np.abs(_XS - 30) >= 10 - np.abs(_YS - 30) * 1.2), _RED, "template"),
    "greyish disc": ((_XS - 30) ** 2 + (_YS - 30) ** 2 <= 8 ** 2, (190, 110, 150), "colour"),
}


@pytest.mark.parametrize("name", list(_CASES))
def test_each_rule_rejects_its_shape(name):
    mask, colour, failed = _CASES[name]
    image = np.full((SIZE, SIZE, 3), 240, np.uint8)
    image[mask] = colour
    accepted, rejected = detector.detect_all(image)
    assert len(accepted) + len(rejected) == 1
    if failed:
        assert accepted == [] and detector.detect(image) == []
        assert rejected[0].rejected_by == failed, rejected[0].quality
    else:
        assert accepted[0].shape == "circle" and accepted[0].rejected_by == ""


def test_prototypes_are_the_ideal_shapes_moments():
    p = detector.PROTOTYPES
    assert p["triangle"]["skew_y"] == pytest.approx(-0.566, abs=0.01)
    assert p["triangle"]["var_ratio"] == pytest.approx(0.75, abs=0.01)
    assert p["square"]["kurt"] == pytest.approx(1.8, abs=0.01)
    assert p["circle"]["kurt"] == pytest.approx(3.0, abs=0.05)
    for s in sw.SHAPES:
        assert abs(p[s]["skew_x"]) < 1e-6 and abs(p[s]["xy_corr"]) < 1e-6
