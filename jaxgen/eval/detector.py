"""Pixel-only object detector for ShapesWorld images.

Pipeline (numpy + scipy.ndimage, no learned weights):
1. background colour = median of the border pixels; a pixel is foreground when its chroma
   (max - min channel) exceeds `chroma_min` (the palette is saturated, the background is not);
2. each foreground pixel takes the palette colour of nearest hue; connected components per colour
   (8-connectivity); a component whose strong cores are separate is split (same-coloured objects
   joined by blur/JPEG smear); components thinner than `min_thickness` (blend fringes between
   touching objects) or smaller than `min_area` (fractions of the canvas) are dropped;
3. the box comes from the mask refined at a fraction of the component's own chroma (undoes blur
   growth); shape and size come from a soft mask (colour distance to the background), whose
   moments and mass blur does not change: apex-up triangles have negative y skewness, squares
   and discs differ in fourth moments, the side follows from the mass; texture from the
   brightness modulation at the texture period along y (stripes) or y and x (dots);
4. shape-quality test: a component is reported only when it looks like a ShapesWorld object:
   at least about a small object's size, a box of nearly equal width and height, a soft mask
   mirror-symmetric about the vertical axis whose second to fourth moments lie near the ideal
   shape's (prototypes are measured on `shape_mask` renderings), a refined mask that overlaps the
   ideal shape drawn in its box, and a saturated, single palette colour (a blob that mixes hues
   or fades to grey has a low chroma / value ratio). Anything else (smears, irregular or
   multi-coloured blobs of an untrained generator) is kept in `detect_all`'s rejected list
   with the failed test's name, and `detect` ignores it.
It never reads tokens or text: only the image.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from jaxgen.data.shapes_world import (COLOR_NAMES, COLORS, DEFAULT_SPEC, PALETTE_HUES, SHAPES,
                                      shape_mask)


@dataclasses.dataclass(frozen=True)
class DetectorSpec:
    chroma_min: float = 45.0  # 0-255 units
    min_area_frac: float = 0.008  # of canvas area (33 px at 64)
    min_thickness_frac: float = 0.03  # max distance-to-edge inside a component (1.9 px at 64)
    refine_chroma_frac: float = 0.35  # refined mask: chroma >= this * component's 90th pct
    core_frac: float = 0.5  # split merged components at this fraction of their colour distance
    core_area_frac: float = 0.3  # a core counts as an object when >= this * min_area
    triangle_skew: float = -0.28  # y skewness: apex-up triangle -0.57, square/disc 0
    square_kurtosis_ratio: float = 2.4  # 4th-moment ratio: square 1.8, disc 3.0
    soft_floor: float = 0.15  # soft mask: colour distance to background, this fraction is 0
    context_frac: float = 0.05  # soft mask looks this far (of the canvas) around a component
    large_side_frac: float = (DEFAULT_SPEC.small_frac + DEFAULT_SPEC.large_frac) / 2
    texture_period_frac: float = DEFAULT_SPEC.texture_period_frac  # half period of a texture
    texture_erode_frac: float = 0.03  # texture is read this far inside the object (2 px at 64)
    texture_min_pixels: int = 16
    texture_min_periods: float = 1.2  # inner height needed to read a texture, in periods
    texture_min_amplitude: float = 0.07  # relative brightness modulation: plain below this
    stripe_axis_ratio: float = 0.4  # x/y modulation below this: stripes (dots: ~1)
    # --- shape-quality test (pipeline step 4). Each tolerance sits near the 1st/99th percentile
    # of its statistic over (a) generator-like perturbed renderings (blur, JPEG 50-85,
    # colour shift, noise, overlap) and (b) ShapesWorld scenes passed through the demo's trained
    # 8x8-code VQ tokenizer (the best a generator can draw): together they reject 0.4% of (a)'s
    # and 3.7% of (b)'s objects, none of a clean rendering's, and 97.5% of the blobs decoded from
    # random VQ codes (what an untrained generator draws). Per-shape tuples follow SHAPES order
    # (square, circle, triangle).
    # longer box side: the smallest object is `small_frac` of the canvas (14 px at 64). Squares
    # and discs keep their box within a pixel or two under blur, JPEG and the VQ (p1: 14 / 13
    # px); a triangle loses its apex rows and, under an overlapping neighbour, part of its base
    # (p1: 12 / 11 px). Random-code blobs are mostly 11-12 px.
    min_side_frac: tuple = (0.85 * DEFAULT_SPEC.small_frac, 0.85 * DEFAULT_SPEC.small_frac,
                            0.75 * DEFAULT_SPEC.small_frac)
    # box height / width (either way up): shapes are drawn in square boxes; an object under an
    # overlapping neighbour loses up to `overlap_frac` of a side, and the VQ squashes discs and
    # small triangles (p1: 0.79 perturbed; through the VQ 0.82 square, 0.71 disc, 0.70 triangle)
    min_box_aspect: float = 0.6
    # |x skewness| and |x-y correlation| of the soft mask: all three shapes are mirror-symmetric
    # about the vertical axis, so both are 0 (p99: 0.15 perturbed, 0.29 VQ)
    max_skew_x: float = 0.4
    max_xy_corr: float = 0.4
    # distance to the classified shape's prototype (`PROTOTYPES`: moments of the ideal
    # `shape_mask`): |y skewness - prototype's| (p99 0.18 / 0.28), |4th-moment ratio /
    # prototype's - 1| (0.19 / 0.30), |log(var x / var y) - prototype's| (0.34 / 0.55; the
    # prototype ratio is 1 for square and disc, 0.75 for the triangle)
    max_skew_y_error: float = 0.35
    max_kurtosis_error: float = 0.35
    max_log_var_ratio_error: float = 0.7
    # IoU of the refined mask with the ideal shape drawn in its box: the VQ rounds corners and
    # apexes, a small triangle's most (p1 through the VQ: 0.71 square, 0.73 disc, 0.48
    # triangle; perturbed: 0.75, 0.82, 0.54). Noise taken for a triangle scores ~0.5.
    min_template_iou: tuple = (0.7, 0.72, 0.5)
    # colour purity: median chroma / value over the core >= this fraction of the palette
    # colour's own (0.70 purple ... 0.87 yellow). Mixing two palette hues, or a hue with grey,
    # lowers it (p1: 0.78 perturbed; 2% of VQ objects, dark greens, fall below; random-code
    # blobs: median 0.57)
    min_saturation_frac: float = 0.7


DEFAULT_DETECTOR = DetectorSpec()


@dataclasses.dataclass
class Detection:
    shape: str
    color: str
    size: str
    texture: str
    box_xyxy: tuple  # pixels, x1/y1 exclusive
    area: int = 0
    fill: float = 0.0
    quality: dict = dataclasses.field(default_factory=dict)  # shape-quality statistics
    rejected_by: str = ""  # the shape-quality test it failed ("" when accepted)

    def to_dict(self) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size,
                "texture": self.texture, "box": [int(v) for v in self.box_xyxy]}


_HUES = np.array([PALETTE_HUES[c] for c in COLOR_NAMES])


def hue_and_chroma(image: np.ndarray):
    """(hue degrees f32[H,W], chroma f32[H,W], value f32[H,W]) of a uint8 RGB image."""
    rgb = image.astype(np.float32)
    mx, mn = rgb.max(-1), rgb.min(-1)
    chroma = mx - mn
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.where(chroma > 0, chroma, 1.0)
    h = np.where(mx == r, ((g - b) / safe) % 6.0,
                 np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return (h * 60.0) % 360.0, chroma, mx


def nearest_color(hue: np.ndarray) -> np.ndarray:
    """Index into COLOR_NAMES of the palette hue nearest (circularly) to each hue."""
    d = np.abs(hue[..., None] - _HUES)
    d = np.minimum(d, 360.0 - d)
    return d.argmin(-1)


def _shape_of(skew_y: float, kurt_ratio: float, spec: "DetectorSpec") -> str:
    # apex-up triangles put their mass low (negative y skewness); squares and circles differ in
    # how their fourth moments spread: E[x^4]/E[x^2 y^2] = 1.8 (square) vs 3.0 (disc)
    if skew_y <= spec.triangle_skew:
        return "triangle"
    return "square" if kurt_ratio < spec.square_kurtosis_ratio else "circle"


def _soft_moments(w: np.ndarray) -> dict:
    """Moment statistics of a soft mask w[h, w] (y grows downwards):
    mass; skew_y (normalised third moment of y); kurt (E[dx^4 + dy^4] / (2 E[dx^2 dy^2]));
    skew_x; xy_corr (mu11 / sqrt(mu20 mu02)); var_ratio (mu20 / mu02)."""
    ys, xs = np.mgrid[0 : w.shape[0], 0 : w.shape[1]]
    m = w.sum()
    cx, cy = (w * xs).sum() / m, (w * ys).sum() / m
    dx, dy = xs - cx, ys - cy
    mu20 = (w * dx**2).sum() / m
    mu02 = (w * dy**2).sum() / m
    mu11 = (w * dx * dy).sum() / m
    mu30 = (w * dx**3).sum() / m
    mu03 = (w * dy**3).sum() / m
    mu40 = (w * dx**4).sum() / m
    mu04 = (w * dy**4).sum() / m
    mu22 = (w * dx**2 * dy**2).sum() / m
    eps = 1e-9
    return {"mass": float(m),
            "skew_y": float(mu03 / max(mu02, eps) ** 1.5),
            "kurt": float((mu40 + mu04) / max(2 * mu22, eps)),
            "skew_x": float(mu30 / max(mu20, eps) ** 1.5),
            "xy_corr": float(mu11 / np.sqrt(max(mu20 * mu02, eps))),
            "var_ratio": float(mu20 / max(mu02, eps))}


# side of the ideal renderings the prototypes are measured on (large enough that pixel sampling
# no longer moves the moments)
_PROTOTYPE_SIDE = 96


def _template(shape: str, h: int, w: int) -> np.ndarray:
    """bool[h, w]: the ideal `shape` drawn in an h x w box (ShapesWorld's own renderer)."""
    return shape_mask(shape, (0, 0, w, h), max(h, w))[:h, :w]


# moment statistics of each ideal shape: what a detected object's moments are compared to
PROTOTYPES = {s: _soft_moments(_template(s, _PROTOTYPE_SIDE, _PROTOTYPE_SIDE).astype(np.float64))
              for s in SHAPES}
# chroma / value of each palette colour (0.70 purple ... 0.87 yellow)
_PALETTE_SATURATION = {name: (max(rgb) - min(rgb)) / max(rgb) for name, rgb in COLORS.items()}


def shape_quality(shape: str, color: str, moments: dict, refined: np.ndarray, box_yx: tuple,
                  chroma: np.ndarray, value: np.ndarray, spec: "DetectorSpec") -> dict:
    """Statistics of the shape-quality test for one component (see `rejection`).

    refined: bool[h, w] refined mask in a crop; box_yx: (y0, y1, x0, x1) of its bounding box in
    that crop; chroma, value: f32[h, w] of the same crop."""
    by0, by1, bx0, bx1 = box_yx
    bh, bw = by1 - by0, bx1 - bx0
    proto = PROTOTYPES[shape]
    box_mask = refined[by0:by1, bx0:bx1]
    template = _template(shape, bh, bw)
    iou = (template & box_mask).sum() / max((template | box_mask).sum(), 1)
    # the core (strong half of the chroma) carries the object's colour; its fringe mixes with
    # the background
    core = refined & (chroma >= spec.core_frac * np.percentile(chroma[refined], 90))
    saturation = float(np.median(chroma[core] / np.maximum(value[core], 1.0)))
    return {"side": int(max(bh, bw)),
            "box_aspect": float(min(bh, bw) / max(bh, bw)),
            "skew_x": abs(moments["skew_x"]),
            "xy_corr": abs(moments["xy_corr"]),
            "skew_y_error": abs(moments["skew_y"] - proto["skew_y"]),
            "kurtosis_error": abs(moments["kurt"] / proto["kurt"] - 1.0),
            "log_var_ratio_error": float(abs(np.log(max(moments["var_ratio"], 1e-9)
                                                    / proto["var_ratio"]))),
            "template_iou": float(iou),
            "saturation_frac": saturation / _PALETTE_SATURATION[color]}


def rejection(shape: str, quality: dict, canvas: int, spec: "DetectorSpec") -> str:
    """Name of the first shape-quality test `quality` fails ("" when it looks like a ShapesWorld
    `shape`); `canvas` is the image's shorter side."""
    k = SHAPES.index(shape)
    tests = (("size", quality["side"] >= spec.min_side_frac[k] * canvas),
             ("aspect", quality["box_aspect"] >= spec.min_box_aspect),
             ("symmetry", quality["skew_x"] <= spec.max_skew_x
              and quality["xy_corr"] <= spec.max_xy_corr),
             ("moments", quality["skew_y_error"] <= spec.max_skew_y_error
              and quality["kurtosis_error"] <= spec.max_kurtosis_error
              and quality["log_var_ratio_error"] <= spec.max_log_var_ratio_error),
             ("template", quality["template_iou"] >= spec.min_template_iou[k]),
             ("colour", quality["saturation_frac"] >= spec.min_saturation_frac))
    return next((name for name, ok in tests if not ok), "")


def _side_from_area(shape: str, area: float) -> float:
    if shape == "square":
        return float(np.sqrt(area))
    if shape == "circle":
        return float(2 * np.sqrt(area / np.pi))
    return float(np.sqrt(2 * area))


def _texture_of(value: np.ndarray, mask: np.ndarray, canvas: int, spec: "DetectorSpec") -> str:
    """plain / striped / dotted from the Fourier amplitude of the brightness at the texture's
    period along y and x (phase-free, so it ignores where the bands start; blur only scales it):
    stripes modulate y only, a dot grid modulates both, plain objects neither."""
    # stay clear of the edge, where blur and JPEG ringing modulate brightness too
    erode = max(1, int(round(spec.texture_erode_frac * canvas)))
    inner = ndimage.binary_erosion(mask, iterations=erode)
    if inner.sum() < spec.texture_min_pixels:
        return "plain"
    period = 2 * max(2, int(round(spec.texture_period_frac * canvas)))
    ys, xs = np.nonzero(inner)
    if ys.max() - ys.min() + 1 < spec.texture_min_periods * period:
        return "plain"  # too small to carry a legible texture (small objects are always plain)
    v = value[ys, xs].astype(np.float64)
    v = v / max(v.mean(), 1e-6) - 1.0
    amp_y = 2 * abs(np.mean(v * np.exp(-2j * np.pi * ys / period)))
    amp_x = 2 * abs(np.mean(v * np.exp(-2j * np.pi * xs / period)))
    if max(amp_x, amp_y) < spec.texture_min_amplitude:
        return "plain"
    return "striped" if amp_x < spec.stripe_axis_ratio * amp_y else "dotted"


def _split_touching(comp: np.ndarray, n: int, bg_dist: np.ndarray, spec: "DetectorSpec",
                    min_area: float, min_thick: float) -> np.ndarray:
    """Relabel components that are several same-coloured objects joined by blur/JPEG smear:
    their strong cores (colour distance >= core_frac of the component's typical one) are
    separate, and every pixel goes to its nearest core."""
    out = comp.copy()
    next_label = n + 1
    for k, sl in enumerate(ndimage.find_objects(comp), start=1):
        if sl is None:
            continue
        m = comp[sl] == k
        if m.sum() < 2 * min_area:
            continue
        d = bg_dist[sl]
        core = m & (d >= spec.core_frac * np.percentile(d[m], 90))
        lab, nc = ndimage.label(core, structure=np.ones((3, 3), bool))
        if nc < 2:
            continue
        keep = [j for j in range(1, nc + 1)
                if (lab == j).sum() >= spec.core_area_frac * min_area
                and ndimage.distance_transform_edt(np.pad(lab == j, 1)).max() >= min_thick]
        if len(keep) < 2:
            continue
        seeds = np.zeros_like(lab)
        for new_id, j in enumerate(keep, start=1):
            seeds[lab == j] = new_id
        _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
        nearest = seeds[iy, ix]
        region = out[sl]
        for new_id in range(2, len(keep) + 1):
            region[m & (nearest == new_id)] = next_label
            next_label += 1
    return out


def detect(image: np.ndarray, spec: DetectorSpec = DEFAULT_DETECTOR) -> list:
    """list[Detection] of a uint8[H, W, 3] image, largest first (area is the confidence); only
    components that pass the shape-quality test."""
    return detect_all(image, spec)[0]


def detect_all(image: np.ndarray, spec: DetectorSpec = DEFAULT_DETECTOR) -> tuple:
    """(accepted, rejected): list[Detection] each, largest first. Rejected components failed the
    shape-quality test (their `rejected_by` names which); kept for debugging."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"detect expects an RGB image [H, W, 3], got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    h, w, _ = image.shape
    canvas = min(h, w)
    hue, chroma, value = hue_and_chroma(image)
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float32)
    bg_dist = np.linalg.norm(image.astype(np.float32) - np.median(border, axis=0), axis=-1)
    fg = chroma > spec.chroma_min
    labels = np.where(fg, nearest_color(hue), -1)
    min_area = spec.min_area_frac * h * w
    min_thick = spec.min_thickness_frac * canvas
    out, rejected = [], []
    eight = np.ones((3, 3), bool)
    for ci, cname in enumerate(COLOR_NAMES):
        mask_c = labels == ci
        if mask_c.sum() < min_area:
            continue
        comp, n = ndimage.label(mask_c, structure=eight)
        comp = _split_touching(comp, n, bg_dist, spec, min_area, min_thick)
        slices = ndimage.find_objects(comp)
        for k, sl in enumerate(slices, start=1):
            if sl is None:
                continue
            # pad one pixel so the distance transform sees the component's border
            y0, x0 = max(sl[0].start - 1, 0), max(sl[1].start - 1, 0)
            y1, x1 = min(sl[0].stop + 1, h), min(sl[1].stop + 1, w)
            m = comp[y0:y1, x0:x1] == k
            if m.sum() < min_area:
                continue
            if ndimage.distance_transform_edt(np.pad(m, 1)).max() < min_thick:
                continue
            ch = chroma[y0:y1, x0:x1]
            refined = m & (ch >= spec.refine_chroma_frac * np.percentile(ch[m], 90))
            refined = ndimage.binary_fill_holes(refined) & m
            if refined.sum() < min_area:
                continue
            ys, xs = np.nonzero(refined)
            by0, by1, bx0, bx1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            # soft mask: blur moves mass around but keeps it, so moments and area survive blur
            pad = int(np.ceil(spec.context_frac * canvas))
            sy0, sx0 = max(y0 - pad, 0), max(x0 - pad, 0)
            sy1, sx1 = min(y1 + pad, h), min(x1 + pad, w)
            near = ndimage.binary_dilation(comp[sy0:sy1, sx0:sx1] == k, iterations=pad)
            others = fg[sy0:sy1, sx0:sx1] & (comp[sy0:sy1, sx0:sx1] != k)
            others &= labels[sy0:sy1, sx0:sx1] != ci
            others |= (comp[sy0:sy1, sx0:sx1] > 0) & (comp[sy0:sy1, sx0:sx1] != k)
            dist = bg_dist[sy0:sy1, sx0:sx1]
            peak = np.percentile(dist[comp[sy0:sy1, sx0:sx1] == k], 90)
            soft = np.clip((dist / max(peak, 1e-6) - spec.soft_floor) / (1 - spec.soft_floor),
                           0, 1) * (near & ~others)
            moments = _soft_moments(soft)
            shape = _shape_of(moments["skew_y"], moments["kurt"], spec)
            side = _side_from_area(shape, moments["mass"])
            size = "large" if side >= spec.large_side_frac * canvas else "small"
            texture = _texture_of(value[y0:y1, x0:x1], refined, canvas, spec)
            quality = shape_quality(shape, cname, moments, refined, (by0, by1, bx0, bx1),
                                    ch, value[y0:y1, x0:x1], spec)
            det = Detection(shape=shape, color=cname, size=size, texture=texture,
                            box_xyxy=(int(bx0 + x0), int(by0 + y0), int(bx1 + x0), int(by1 + y0)),
                            area=int(round(moments["mass"])),
                            fill=float(refined.sum() / ((by1 - by0) * (bx1 - bx0))),
                            quality=quality, rejected_by=rejection(shape, quality, canvas, spec))
            (rejected if det.rejected_by else out).append(det)
    out.sort(key=lambda d: -d.area)
    rejected.sort(key=lambda d: -d.area)
    return out, rejected
