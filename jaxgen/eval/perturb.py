"""Perturbations that imitate a generator's output (used to test evaluator robustness).

`generator_like(image, rng)`: JPEG round trip, Gaussian blur, per-channel colour shift, gain and
pixel noise, with strengths drawn from `PerturbSpec` ranges (about what a 16x VQ reconstruction
of a 64 px image does). `overlap_scene(scene, rng)`: moves one object until its box overlaps a
differently coloured neighbour by a few pixels (stated relations are kept).
"""

from __future__ import annotations

import copy
import dataclasses
import io

import numpy as np
from PIL import Image
from scipy import ndimage

from jaxgen.data.shapes_world import Scene, relative_position


@dataclasses.dataclass(frozen=True)
class PerturbSpec:
    jpeg_quality: tuple = (50, 85)
    blur_sigma_frac: tuple = (0.004, 0.014)  # of the canvas side (0.25-0.9 px at 64)
    color_shift: float = 12.0  # max per-channel offset, 0-255 units
    gain: tuple = (0.92, 1.06)
    noise_std: float = 4.0
    overlap_frac: tuple = (0.02, 0.05)  # overlap depth, of the canvas side


DEFAULT_PERTURB = PerturbSpec()


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def generator_like(image: np.ndarray, rng: np.random.Generator,
                   spec: PerturbSpec = DEFAULT_PERTURB) -> np.ndarray:
    """uint8 image with blur, colour shift/gain, noise and JPEG artefacts applied."""
    x = image.astype(np.float32)
    sigma = rng.uniform(*spec.blur_sigma_frac) * image.shape[0]
    x = ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0))
    x = x * rng.uniform(*spec.gain) + rng.uniform(-spec.color_shift, spec.color_shift, size=3)
    x = x + rng.normal(0.0, spec.noise_std, size=x.shape)
    x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    return jpeg(x, rng.integers(spec.jpeg_quality[0], spec.jpeg_quality[1] + 1))


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def overlap_scene(scene: Scene, rng: np.random.Generator,
                  spec: PerturbSpec = DEFAULT_PERTURB) -> Scene:
    """A copy where one object slides onto a differently coloured one by a few pixels, keeping
    every pair's GenEval relations; returns the scene unchanged when no pair allows it."""
    objs = scene.objects
    pairs = [(i, j) for i in range(len(objs)) for j in range(len(objs))
             if i != j and objs[i].color != objs[j].color]
    rng.shuffle(pairs)
    depth = max(1, int(round(rng.uniform(*spec.overlap_frac) * scene.canvas)))
    before = {(a, b): relative_position(objs[a].box, objs[b].box)
              for a in range(len(objs)) for b in range(len(objs)) if a != b}
    for i, j in pairs:
        bi, bj = objs[i].box, objs[j].box
        ci = np.array([(bi[0] + bi[2]) / 2, (bi[1] + bi[3]) / 2])
        cj = np.array([(bj[0] + bj[2]) / 2, (bj[1] + bj[3]) / 2])
        step = np.sign(cj - ci) * (np.abs(cj - ci) == np.abs(cj - ci).max())
        if not step.any():
            continue
        box = list(bi)
        for _ in range(scene.canvas):
            box = [box[0] + step[0], box[1] + step[1], box[2] + step[0], box[3] + step[1]]
            if _overlaps(box, bj):
                break
        box = [box[0] + step[0] * (depth - 1), box[1] + step[1] * (depth - 1),
               box[2] + step[0] * (depth - 1), box[3] + step[1] * (depth - 1)]
        box = tuple(int(v) for v in box)
        if min(box) < 0 or max(box[2], box[3]) > scene.canvas:
            continue
        if any(k != i and k != j and _overlaps(box, objs[k].box) for k in range(len(objs))):
            continue
        new = copy.deepcopy(scene)
        new.objects[i].box = box
        same = all(relative_position(new.objects[a].box, new.objects[b].box) == rels
                   for (a, b), rels in before.items())
        if same:
            # the moved object is drawn first, so the other one keeps its full shape
            new.objects = [new.objects[i]] + [o for k, o in enumerate(new.objects) if k != i]
            return new
    return scene
