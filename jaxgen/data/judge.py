"""Examples for training a ShapesWorld reward judge.

Two tasks (`data.judge_task` in configs/sft.py):
- 'yes_no': a yes/no question about an image (the T2I-R1 / Janus-Pro-R1 judge). Positives: a
  record's image with its own prompt ('yes'). Negatives: the same image with a minimally
  perturbed prompt: one colour, shape, count or relation changed (`prompts.perturb_metadata`),
  answer 'no'. Balanced 50/50; a negative is kept only when the pixel evaluator agrees that
  the image does not satisfy it (so labels are never wrong).
- 'describe': the image's prompt as its description (DESCRIBE_QUESTION -> prompt). Every prompt
  token is supervised, so the judge learns to read colours, shapes, counts and places far
  faster than from one yes/no bit per image; the reward is then how much the image raises the
  likelihood of the prompt (rewards 'vlm_caption', VisualGPTScore-style). A `blank_fraction`
  of the rows shows a blank image instead, so the judge also learns the prompt prior
  p(prompt | no evidence) that the reward subtracts.
"""

from __future__ import annotations

import json

import numpy as np

from jaxgen.data.prompts import PERTURBATIONS, perturb_metadata

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


def judge_question(prompt: str) -> str:
    return QUESTION.format(prompt=prompt)


def _metadata(rec) -> dict:
    meta = rec["metadata"]
    return json.loads(meta) if isinstance(meta, (str, bytes)) else meta


def record_tag(rec) -> str:
    """The record's prompt category."""
    return _metadata(rec)["tag"]


def judge_examples(records, rng: np.random.Generator, verify: bool = True,
                   easy_negatives: float = 0.0) -> list:
    """list of dicts {image, prompt, question, answer ('yes'|'no'), category, perturbation}.

    records: sequence of SFT records ({'image', 'prompt', 'category', 'metadata' (json str or
    dict)}). Each record gives one positive and one negative (when some perturbation applies).
    easy_negatives: fraction of negatives that use another record's prompt instead of a minimal
    perturbation (perturbation 'other_prompt'); easy pairs give a small judge a learning signal
    before the one-attribute differences do.
    """
    from jaxgen.eval.geneval import score

    records = list(records)
    out = []
    for rec in records:
        meta = _metadata(rec)
        negative = None
        if easy_negatives > 0 and rng.random() < easy_negatives:
            other = _metadata(records[int(rng.integers(len(records)))])
            if other["prompt"] != meta["prompt"] and not (verify and score(rec["image"], other)["correct"]):
                negative = ("other_prompt", other)
        kinds = list(PERTURBATIONS) if negative is None else []
        rng.shuffle(kinds)
        for kind in kinds:
            cand = perturb_metadata(meta, rng, kind)
            if cand is None:
                continue
            if verify and score(rec["image"], cand)["correct"]:
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
    from jaxgen.data.corruptions import corrupt_image

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
