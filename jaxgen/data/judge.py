"""Examples for training a ShapesWorld reward judge (a yes/no VLM question about an image).

Positives: a record's image with its own prompt ('yes'). Negatives: the same image with a
minimally perturbed prompt: one colour, shape, count or relation changed
(`prompts.perturb_metadata`), answer 'no'. Balanced 50/50; a negative is kept only when the
pixel evaluator agrees that the image does not satisfy it (so labels are never wrong).
"""

from __future__ import annotations

import json

import numpy as np

from jaxgen.data.prompts import PERTURBATIONS, perturb_metadata

QUESTION = "Does this image show {prompt}? Answer yes or no."
# Dense auxiliary task: the answer is the image's layout plan, so every answer token (each
# object's colour, shape, size and box) has to be read from the image.
CAPTION_QUESTION = "List the objects in this image with their boxes."


def judge_question(prompt: str) -> str:
    return QUESTION.format(prompt=prompt)


def _metadata(rec) -> dict:
    meta = rec["metadata"]
    return json.loads(meta) if isinstance(meta, (str, bytes)) else meta


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
