"""Examples for training a ShapesWorld reward judge.

Three tasks (`data.judge_task` in configs/sft.py):
- 'yes_no': a yes/no question about an image (the T2I-R1 / Janus-Pro-R1 judge). Positives: a
  record's image with its own prompt ('yes'). Negatives: the same image with a minimally
  perturbed prompt: one colour, shape, count or relation changed (`prompts.perturb_metadata`),
  answer 'no'. Balanced 50/50; given a `satisfies(image, metadata)` check (the trainer passes
  the pixel evaluator's verdict), a negative is kept only when the image does not satisfy it
  (so labels are never wrong).
- 'crop': one object of a scene cut out and zoomed (`jaxgen.data.crops`) and named ("red
  circle"); a `corrupted_fraction` of the objects are redrawn malformed by the renderer first
  (answer "Malformed drawing.") and an `empty_fraction` of the records add a crop of plain
  background ("Nothing."). The 'vlm_crop' reward asks it about each planned object of a
  policy sample. Labels come from how the image was made, never from the pixel evaluator.
- 'describe': the image's prompt as its description (DESCRIBE_QUESTION -> prompt). Every prompt
  token is supervised, so the judge learns to read colours, shapes, counts and places far
  faster than from one yes/no bit per image; the reward is then how much the image raises the
  likelihood of the prompt (rewards 'vlm_caption', VisualGPTScore-style). A `blank_fraction`
  of the rows shows a blank image instead, so the judge also learns the prompt prior
  p(prompt | no evidence) that the reward subtracts.
"""

from __future__ import annotations

import json
from typing import Callable, Optional

import numpy as np
from scipy import ndimage

from jaxgen.data.corruptions import CORRUPTIONS, corrupt_image
from jaxgen.data.crops import CROP_SCALE, crop_uint8
from jaxgen.data.prompts import PERTURBATIONS, perturb_metadata
from jaxgen.data.reasoning import from_grid, parse_plan

QUESTION = "Does this image show {prompt}? Answer yes or no."
DESCRIBE_QUESTION = "Describe this image."
BLANK_GREY = 128  # the blank image: one mid-grey colour that no ShapesWorld scene uses alone
# Dense auxiliary task: the answer is the image's layout plan, so every answer token (each
# object's colour, shape, size and box) has to be read from the image.
CAPTION_QUESTION = "List the objects in this image with their boxes."
# The description of a scene the policy redrew with its own mistakes (jaxgen.train.self_eval).
# No prompt starts with it, so the caption reward's first token is where a judge that has learnt
# drawing quality lowers the likelihood of the prompt.
DEGRADED_ANSWER = "Malformed drawing."
# The crop task (jaxgen.data.crops): one object zoomed to fill the image, named without its size
# (a crop has no scale), e.g. "red striped circle"; a malformed object is DEGRADED_ANSWER and a
# crop of background EMPTY_ANSWER. Each answer starts with its own first token, so the 'vlm_crop'
# reward compares the three from one teacher-forced pass.
CROP_QUESTION = "What is drawn in the middle of this image?"
EMPTY_ANSWER = "Nothing."


def judge_question(prompt: str) -> str:
    return QUESTION.format(prompt=prompt)


def _metadata(rec) -> dict:
    meta = rec["metadata"]
    return json.loads(meta) if isinstance(meta, (str, bytes)) else meta


def record_tag(rec) -> str:
    """The record's prompt category."""
    return _metadata(rec)["tag"]


def judge_examples(records, rng: np.random.Generator,
                   satisfies: Optional[Callable[[np.ndarray, dict], bool]] = None,
                   easy_negatives: float = 0.0) -> list:
    """list of dicts {image, prompt, question, answer ('yes'|'no'), category, perturbation}.

    records: sequence of SFT records ({'image', 'prompt', 'category', 'metadata' (json str or
    dict)}). Each record gives one positive and one negative (when some perturbation applies).
    satisfies: (image, metadata) -> bool, e.g. the pixel evaluator's verdict; a candidate
    negative the image satisfies is skipped (None: every candidate is kept).
    easy_negatives: fraction of negatives that use another record's prompt instead of a minimal
    perturbation (perturbation 'other_prompt'); easy pairs give a small judge a learning signal
    before the one-attribute differences do.
    """
    records = list(records)
    out = []
    for rec in records:
        meta = _metadata(rec)
        negative = None
        if easy_negatives > 0 and rng.random() < easy_negatives:
            other = _metadata(records[int(rng.integers(len(records)))])
            if other["prompt"] != meta["prompt"] and not (satisfies is not None
                                                          and satisfies(rec["image"], other)):
                negative = ("other_prompt", other)
        kinds = list(PERTURBATIONS) if negative is None else []
        rng.shuffle(kinds)
        for kind in kinds:
            cand = perturb_metadata(meta, rng, kind)
            if cand is None:
                continue
            if satisfies is not None and satisfies(rec["image"], cand):
                continue
            negative = (kind, cand)
            break
        if negative is None:
            continue
        out.append({"image": rec["image"], "prompt": meta["prompt"],
                    "question": judge_question(meta["prompt"]), "answer": "yes",
                    "category": meta["tag"], "perturbation": "none"})
        kind, cand = negative
        out.append({"image": rec["image"], "prompt": cand["prompt"],
                    "question": judge_question(cand["prompt"]), "answer": "no",
                    "category": meta["tag"], "perturbation": kind})
    return out


def caption_examples(records, rng: np.random.Generator, fraction: float) -> list:
    """Describe-the-image rows for a `fraction` of the records: {image, prompt, question
    (CAPTION_QUESTION), answer (the record's layout plan), category, perturbation='caption'}."""
    out = []
    for rec in records:
        if fraction <= 0 or rng.random() >= fraction:
            continue
        meta = _metadata(rec)
        out.append({"image": rec["image"], "prompt": meta["prompt"], "question": CAPTION_QUESTION,
                    "answer": rec["plan"], "category": meta["tag"], "perturbation": "caption"})
    return out


def blank_image(size: int) -> np.ndarray:
    """uint8[size, size, 3] of BLANK_GREY: the image of 'no visual evidence'."""
    return np.full((size, size, 3), BLANK_GREY, np.uint8)


def describe_examples(records, rng: np.random.Generator, blank_fraction: float) -> list:
    """Rows {image, prompt, question (DESCRIBE_QUESTION), answer (the prompt), category,
    perturbation ('describe' or 'blank')}: one per record; a `blank_fraction` of them show
    blank_image instead of the record's image (the prior the 'vlm_caption' reward subtracts)."""
    out = []
    for rec in records:
        meta = _metadata(rec)
        image = np.asarray(rec["image"], np.uint8)
        blank = blank_fraction > 0 and rng.random() < blank_fraction
        out.append({"image": blank_image(image.shape[0]) if blank else image,
                    "prompt": meta["prompt"], "question": DESCRIBE_QUESTION,
                    "answer": meta["prompt"], "category": meta["tag"],
                    "perturbation": "blank" if blank else "describe"})
    return out


def corrupted_examples(records, rng: np.random.Generator, fraction: float) -> list:
    """Describe rows whose image is a record's scene with one object redrawn malformed by the
    renderer (`corruptions.corrupt_image`), answered DEGRADED_ANSWER; for a `fraction` of the
    records. perturbation = 'corrupt_<kind>'."""
    out = []
    for rec in records:
        if fraction <= 0 or rng.random() >= fraction:
            continue
        meta = _metadata(rec)
        image, kind = corrupt_image(rec["image"], rec["plan"], rng)
        out.append({"image": image, "prompt": meta["prompt"], "question": DESCRIBE_QUESTION,
                    "answer": DEGRADED_ANSWER, "category": meta["tag"],
                    "perturbation": f"corrupt_{kind}"})
    return out


def crop_answer(obj: dict) -> str:
    """The crop task's name of a plan object: '[colour] [texture] shape' (no size)."""
    words = [obj.get("color"), obj.get("texture"), obj["shape"]]
    return " ".join(w for w in words if w and w != "plain")


def _empty_box(boxes, side: float, canvas: int, rng: np.random.Generator, tries: int = 50):
    """A `side`-pixel box whose crop window touches none of `boxes` (pixels), or None."""
    win = min(CROP_SCALE * side, canvas)
    for _ in range(tries):
        x0, y0 = rng.uniform(0, canvas - win, size=2)
        if all(x0 + win <= b[0] or b[2] <= x0 or y0 + win <= b[1] or b[3] <= y0 for b in boxes):
            pad = (win - side) / 2
            return [x0 + pad, y0 + pad, x0 + pad + side, y0 + pad + side]
    return None


def crop_examples(records, rng: np.random.Generator, out_size: int,
                  corrupted_fraction: float = 0.0, empty_fraction: float = 0.0,
                  prepare=None, kinds=None, blur=(0.0, 0.0)) -> list:
    """Rows {image (uint8 crop), prompt, question (CROP_QUESTION), answer, category,
    perturbation ('crop', 'crop_<corruption>' or 'crop_empty')}: one per object of every record.

    prepare: optional uint8[B, H, W, 3] -> uint8[B, H, W, 3] applied to the whole scenes before
    cropping (e.g. the VQ round trip, so the crops carry the tokenizer's artefacts at the scale
    the policy draws them). kinds: the corruptions to draw from (default all); blur: a range of
    Gaussian blur sigmas in pixels, one drawn per scene and applied to it (clean or corrupted)
    before `prepare`, so soft edges alone do not read as malformed."""
    scenes, boxes, meta_rows = [], [], []
    for rec in records:
        meta = _metadata(rec)
        image = np.asarray(rec["image"], np.uint8)
        canvas = image.shape[0]
        objects = parse_plan(rec["plan"]).objects
        pixel_boxes = [from_grid(o["box"], canvas) for o in objects]
        for k, (obj, box) in enumerate(zip(objects, pixel_boxes)):
            row = {"prompt": meta["prompt"], "question": CROP_QUESTION, "category": meta["tag"]}
            if corrupted_fraction > 0 and rng.random() < corrupted_fraction:
                scene, kind = corrupt_image(image, rec["plan"], rng, kinds=kinds or CORRUPTIONS,
                                            index=k)
                row.update(answer=DEGRADED_ANSWER, perturbation=f"crop_{kind}")
            else:
                scene = image
                row.update(answer=crop_answer(obj), perturbation="crop")
            scenes.append(scene)
            boxes.append(box)
            meta_rows.append(row)
        if empty_fraction > 0 and rng.random() < empty_fraction and pixel_boxes:
            side = min(b[2] - b[0] for b in pixel_boxes)  # the smallest object fits most often
            box = _empty_box(pixel_boxes, side, canvas, rng)
            if box is not None:
                scenes.append(image)
                boxes.append(box)
                meta_rows.append({"prompt": meta["prompt"], "question": CROP_QUESTION,
                                  "category": meta["tag"], "answer": EMPTY_ANSWER,
                                  "perturbation": "crop_empty"})
    if not scenes:
        return []
    if blur[1] > 0:
        scenes = [np.clip(np.round(ndimage.gaussian_filter(
            s.astype(np.float64), (sigma, sigma, 0))), 0, 255).astype(np.uint8)
            for s, sigma in zip(scenes, rng.uniform(blur[0], blur[1], len(scenes)))]
    scenes = np.stack(scenes)
    if prepare is not None:
        scenes = prepare(scenes)
    crops = np.concatenate([crop_uint8(scenes[i:i + 256], np.asarray(boxes[i:i + 256], np.float32),
                                       out_size) for i in range(0, len(scenes), 256)])
    return [dict(row, image=crop) for row, crop in zip(meta_rows, crops)]
