"""VLM-judge rewards on the unified model's understanding path, jitted and on the policy's mesh
(the kernels and the judge service: jaxgen.sampling.understanding).

The judge is any checkpoint in the unified architecture (a Janus-Pro model or a ShapesWorld
judge trained by the SFT understanding task). Its parameters are placed once on the mesh with
shardings from jaxgen.parallel; policy image tokens are decoded to pixels by the policy's VQ
decoder inside the same jitted function and go straight into the judge's understanding path (its
SigLIP tower, or its VQ encoder for a judge that reads images as VQ codes), so images and weights
never leave the device. Questions are tokenised once per batch and left-padded to a
fixed length (no recompilation between iterations).

  yes/no judge:  P(yes) / (P(yes) + P(no)) from the first answer token (T2I-R1, Janus-Pro-R1)
  boxed judge:   greedy answer that ends with \\boxed{1} or \\boxed{0} (ReasonGen-R1)
  caption judge: how much the image raises the likelihood of the prompt as the image's
                 description, per prompt token: mean_t [log p(y_t | image) - log p(y_t | blank
                 image)] (VisualGPTScore's P(text | image) / P(text)); for a judge trained on the
                 'describe' task (configs/sft.py data.judge_task)
  GoT-R1:        R_sem (text-only yes/no on the reasoning), R_spa (planned boxes drawn on a blank
                 canvas, judged), R_PI (prompt-image yes/no)
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxgen.convert.load import load_model
from jaxgen.data import judge as judge_data
from jaxgen.errors import UserError
from jaxgen.sampling.understanding import VLMJudge, parse_boxed
from jaxgen.rewards import plan as plan_lib
from jaxgen.rewards.base import RewardBatch, RewardContext, register_reward

DEFAULT_QUESTION = judge_data.QUESTION  # the question the ShapesWorld judge is trained on
DEFAULT_BOXED_QUESTION = ("Does this image show exactly what the prompt asks: {prompt}? Check "
                          "every object, count, colour and position, then answer \\boxed{{1}} "
                          "or \\boxed{{0}}.")
DEFAULT_SEMANTIC_QUESTION = ("Prompt: {prompt}\nPlan: {reasoning}\nDoes the plan describe "
                             "every object of the prompt correctly? Answer yes or no.")
DEFAULT_SPATIAL_QUESTION = ("This layout was planned for: {prompt}. Are the objects placed "
                            "correctly? Answer yes or no.")
IMAGE_SOURCES = ("image", "plan_canvas", "none")


# --------------------------------------------------------------------------- factories


def load_judge(context: RewardContext, judge: str, **judge_kw) -> VLMJudge:
    """The judge named `judge`: a key already in context.judges, 'policy' (self-judgment with
    the current policy params), or a model directory (loaded once, cached): a jaxgen checkpoint
    or a Hugging Face Janus directory (e.g. Janus-Pro-7B judging a smaller policy)."""
    key = (judge, tuple(sorted(judge_kw.items())))
    if judge in context.judges:
        return context.judges[judge]
    if key in context.judges:
        return context.judges[key]
    if judge == "policy":
        if context.policy_params_fn is None:
            raise UserError("judge='policy' needs the GRPO loop's policy; give a judge "
                            "checkpoint directory instead")
        out = VLMJudge(context.policy_params_fn, context.policy_config,
                       context.policy_tokenizer, context.mesh, context.layout, **judge_kw)
    else:
        params, config, tokenizer = load_model(judge)
        if tokenizer is None:
            raise UserError(f"judge {judge} has no tokenizer files (tokenizer.json); the judge "
                            "reads its questions as text")
        out = VLMJudge(params, config, tokenizer, context.mesh, context.layout, **judge_kw)
    context.judges[key] = out
    return out


def _fill(template: str, prompt: str, reasoning: str) -> str:
    try:
        return template.format(prompt=prompt, reasoning=reasoning)
    except (KeyError, IndexError) as e:
        raise UserError(f"question_template {template!r} has an unknown field {e}; use "
                        "{prompt} and {reasoning}") from None


def _judge_images(judge: VLMJudge, context: RewardContext, batch: RewardBatch, questions):
    if batch.image_tokens is not None and context.policy_params_fn is not None:
        return judge.prob_yes(questions, codes=batch.image_tokens,
                              decoder=(context.policy_params_fn(), context.policy_config))
    if batch.images is None:
        raise UserError("the VLM judge needs images or image tokens in the reward batch")
    return judge.prob_yes(questions, images=batch.images)


def make_yes_no(context, judge: str = "policy", question_template: str = DEFAULT_QUESTION,
                image_source: str = "image", canvas_size: int = 0, **judge_kw):
    """R_QA = P(yes)/(P(yes)+P(no)). image_source: 'image' (the generated image), 'plan_canvas'
    (the planned boxes drawn on a blank canvas: GoT-R1 R_spa) or 'none' (text only: R_sem)."""
    if image_source not in IMAGE_SOURCES:
        raise UserError(f"image_source {image_source!r}: choose one of {IMAGE_SOURCES}")
    vlm = load_judge(context, judge, **judge_kw)

    def fn(batch: RewardBatch):
        questions = [_fill(question_template, p, r) for p, r in zip(batch.prompts, batch.reasoning)]
        if image_source == "none":
            return vlm.prob_yes(questions)
        if image_source == "plan_canvas":
            size = canvas_size or vlm.config.vision.image_size
            canvases = np.stack([plan_lib.draw_plan(plan_lib.parse_plan(r), size)
                                 for r in batch.reasoning])
            return vlm.prob_yes(questions, images=canvases)
        return _judge_images(vlm, context, batch, questions)
    return fn


register_reward("vlm_yes_no")(make_yes_no)


@register_reward("got_prompt_image")
def make_got_prompt_image(context, question_template: str = DEFAULT_QUESTION, **kw):
    """GoT-R1 R_PI: prompt-image alignment judged yes/no."""
    return make_yes_no(context, question_template=question_template, image_source="image", **kw)


@register_reward("got_semantic")
def make_got_semantic(context, question_template: str = DEFAULT_SEMANTIC_QUESTION, **kw):
    """GoT-R1 R_sem: the judge reads the prompt and the reasoning (no image)."""
    return make_yes_no(context, question_template=question_template, image_source="none", **kw)


@register_reward("got_spatial")
def make_got_spatial(context, question_template: str = DEFAULT_SPATIAL_QUESTION, **kw):
    """GoT-R1 R_spa: planned boxes drawn on a blank canvas, judged yes/no."""
    return make_yes_no(context, question_template=question_template,
                       image_source="plan_canvas", **kw)


@register_reward("vlm_boxed")
def make_boxed(context, judge: str = "policy", question_template: str = DEFAULT_BOXED_QUESTION,
               max_new_tokens: int = 64, default: float = 0.0, **judge_kw):
    """ReasonGen-R1: the judge writes an answer ending in \\boxed{1} / \\boxed{0}."""
    vlm = load_judge(context, judge, **judge_kw)

    def fn(batch: RewardBatch):
        if batch.images is None:
            raise UserError("vlm_boxed needs decoded images in the reward batch")
        questions = [_fill(question_template, p, r) for p, r in zip(batch.prompts, batch.reasoning)]
        texts = vlm.answer(questions, images=batch.images, max_new_tokens=max_new_tokens)
        return np.array([parse_boxed(t, default) for t in texts], np.float32)
    return fn


CAPTION_BASELINES = ("blank", "none")


@register_reward("vlm_caption")
def make_caption(context, judge: str = "policy", question: str = judge_data.DESCRIBE_QUESTION,
                 answer_template: str = "{prompt}", baseline: str = "blank",
                 max_answer_tokens: int = 48, **judge_kw):
    """Caption-likelihood reward (VisualGPTScore): the mean over the answer's tokens (the prompt,
    then <eos>) of log p(token | image) - log p(token | blank image), in nats. Positive when the
    image is evidence for the prompt, ~0 when the judge cannot see what the prompt asks, negative
    when the image contradicts it. baseline 'none' drops the prior term (within a GRPO group it
    is the same for every sample, so group-normalised advantages do not change)."""
    if baseline not in CAPTION_BASELINES:
        raise UserError(f"baseline {baseline!r}: choose one of {CAPTION_BASELINES}")
    vlm = load_judge(context, judge, **judge_kw)
    size = vlm.config.understanding_image_size

    def fn(batch: RewardBatch):
        answers = [_fill(answer_template, p, r) for p, r in zip(batch.prompts, batch.reasoning)]
        questions = [question] * len(answers)
        if batch.image_tokens is not None and context.policy_params_fn is not None:
            kw = dict(codes=batch.image_tokens,
                      decoder=(context.policy_params_fn(), context.policy_config))
        elif batch.images is not None:
            kw = dict(images=batch.images)
        else:
            raise UserError("the caption judge needs images or image tokens in the reward batch")
        total, length = vlm.answer_logprob(questions, answers, max_answer_tokens=max_answer_tokens,
                                           **kw)
        if baseline == "blank":
            total = total - blank_prior(vlm, question, answers, size, max_answer_tokens)
        return total / jnp.maximum(length, 1)
    return fn


def blank_prior(vlm: VLMJudge, question: str, answers: list[str], size: int,
                max_answer_tokens: int):
    """float32[B]: log p(answer | blank image, question) for every answer, computed once per
    distinct answer (a GRPO batch repeats each prompt G times). The distinct answers are padded
    to a power-of-two count by repeating the first, so the judge compiles for a few row counts
    only (one, when every batch holds the same number of prompts)."""
    unique = list(dict.fromkeys(answers))
    rows = min(len(answers), 1 << (len(unique) - 1).bit_length())
    padded = unique + unique[:1] * (rows - len(unique))
    blank = np.broadcast_to(judge_data.blank_image(size), (rows, size, size, 3))
    prior, _ = vlm.answer_logprob([question] * rows, padded, images=np.ascontiguousarray(blank),
                                  max_answer_tokens=max_answer_tokens)
    position = {a: i for i, a in enumerate(unique)}
    return jnp.take(prior, jnp.asarray([position[a] for a in answers], jnp.int32))
