"""'vlm_crop': a VLM judge asked about each planned object, zoomed (GoT-R1's region check).

For every object of a sample's layout plan (up to `max_objects`), the policy's image is cut
around the planned box and scaled up (jaxgen.data.crops, on device, after the in-graph VQ
decode), and a judge trained on the 'crop' task (configs/sft.py data.judge_task) reads it. The
object's score is the judge's preference for the planned name over the two other answers it
was trained on:

    p_obj = softmax(log p(name | crop), log p(first token of "Malformed drawing." | crop),
                    log p(first token of "Nothing." | crop))[0]

one teacher-forced pass per object (the alternatives are told apart by their first token). The
sample's reward is the mean p_obj over its planned objects, float32[B] in [0, 1]; a plan that
does not parse scores 0. It checks the drawing against the plan, not the plan against the
prompt.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import parallel
from jaxgen.data import judge as judge_data
from jaxgen.data.crops import crop_boxes
from jaxgen.data.reasoning import from_grid, parse_plan
from jaxgen.errors import UserError
from jaxgen.rewards.base import RewardBatch, register_reward
from jaxgen.rewards.vlm_judge import load_judge
from jaxgen.sampling.understanding import (answer_log_softmax, decoded_pixels, quantise_pixels,
                                           summed_answer_logp, uint8_to_unit)

_decode = jax.jit(decoded_pixels, static_argnames=("policy_config",))


@functools.partial(jax.jit, static_argnames=("config", "crop_size"))
def object_scores(params, config, pixels_bhwc, sample_r, boxes_r4, ids_rl, mask_rl, answer_rt,
                  answer_mask_rt, alt_first_ids, crop_size: int):
    """float32[R]: p_obj of each row (one planned object of image `sample_r`), as above."""
    crops = quantise_pixels(crop_boxes(pixels_bhwc[sample_r], boxes_r4, crop_size))
    logp = answer_log_softmax(params, config, ids_rl, mask_rl, crops, answer_rt, answer_mask_rt)
    named = summed_answer_logp(logp, answer_rt, answer_mask_rt)
    others = logp[:, 0][:, alt_first_ids]  # [R, n_alt]
    return jax.nn.softmax(jnp.concatenate([named[:, None], others], -1), -1)[:, 0]


def plan_rows(reasoning, canvas: int, max_objects: int):
    """(sample int32[R], boxes float32[R, 4] pixels, answers list[R], valid bool[B, K]) for
    R = B * max_objects rows; rows past a sample's objects are padding (valid False)."""
    b = len(reasoning)
    boxes = np.tile(np.array([0, 0, canvas, canvas], np.float32), (b * max_objects, 1))
    answers = [judge_data.EMPTY_ANSWER] * (b * max_objects)
    valid = np.zeros((b, max_objects), bool)
    for i, text in enumerate(reasoning):
        parsed = parse_plan(text)
        if not parsed.ok:
            continue
        for k, obj in enumerate(parsed.objects[:max_objects]):
            boxes[i * max_objects + k] = from_grid(obj["box"], canvas)
            answers[i * max_objects + k] = judge_data.crop_answer(obj)
            valid[i, k] = True
    sample = np.repeat(np.arange(b, dtype=np.int32), max_objects)
    return sample, boxes, answers, valid


@register_reward("vlm_crop")
def make_crop(context, judge: str = "policy", question: str = judge_data.CROP_QUESTION,
              max_objects: int = 4, max_answer_tokens: int = 12, **judge_kw):
    vlm = load_judge(context, judge, **judge_kw)
    alternatives = (judge_data.DEGRADED_ANSWER, judge_data.EMPTY_ANSWER)
    alt_first = tuple(vlm.tokenizer.encode(a, add_special_tokens=False)[0] for a in alternatives)
    if len(set(alt_first)) != len(alt_first):
        raise UserError(f"the judge's tokenizer starts {alternatives} with the same token; the "
                        "crop reward cannot tell them apart")
    alt_ids = jnp.asarray(alt_first, jnp.int32)

    def fn(batch: RewardBatch):
        if batch.image_tokens is not None and context.policy_params_fn is not None:
            pixels = _decode(context.policy_params_fn(), context.policy_config,
                             jnp.asarray(batch.image_tokens, jnp.int32))
        elif batch.images is not None:
            pixels = uint8_to_unit(np.asarray(batch.images))
        else:
            raise UserError("the crop judge needs images or image tokens in the reward batch")
        canvas = int(pixels.shape[1])
        sample, boxes, answers, valid = plan_rows(batch.reasoning, canvas, int(max_objects))
        names = {a for a, v in zip(answers, valid.reshape(-1)) if v}
        for a in names:  # a name must not begin like an alternative (the softmax above)
            if vlm.tokenizer.encode(a, add_special_tokens=False)[0] in alt_first:
                raise UserError(f"object name {a!r} starts with the same token as one of "
                                f"{alternatives}; the crop reward cannot score it")
        ids, mask = vlm.tokenize([question] * len(answers), with_image=True)
        ans, ans_mask = vlm.tokenize_answers(answers, int(max_answer_tokens))
        p = object_scores(vlm.params, vlm.config, pixels, jnp.asarray(sample), jnp.asarray(boxes),
                          ids, mask, ans, ans_mask, alt_ids, canvas)
        p = np.asarray(parallel.to_host(p), np.float32).reshape(valid.shape)
        count = valid.sum(1)
        return np.where(count > 0, (p * valid).sum(1) / np.maximum(count, 1), 0.0).astype(np.float32)
    return fn
