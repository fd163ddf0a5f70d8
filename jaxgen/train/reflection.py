"""Janus-Pro-R1 self-reflection loop and its rewards R_Gen and R_Comp.

Loop: generate an image; the same model judges it in text through its understanding path
(SE = P(yes)/(P(yes)+P(no)) to a question about the prompt); if it says no, generate again, at
most T images. With fixed shapes every row generates all T images in lockstep (one jitted
sampler call per round) and the stop index K_b (1-based: the first image judged yes, else T)
masks what comes after; nothing recompiles.

Simplification (stated): a regeneration is a fresh sample of the same prompt with a new key; the
paper's regeneration also conditions on the previous image and its critique.

Rewards (Janus-Pro-R1, Pan et al. 2025), with R_QA(I_i) from an external judge:
  R_Gen  = sum_{i<K} R_QA(I_i) + (T - K + 1) R_QA(I_K)
  R_Comp = sum_{i<=K} (1 - |R_QA(I_i) - SE(I_i)|) * T / K
"""

from __future__ import annotations

import jax
import numpy as np

from jaxgen.rewards.vlm_judge import DEFAULT_QUESTION, VLMJudge
from jaxgen.sampling import sampler as sampler_lib


def stop_index(se_bt, threshold: float = 0.5) -> np.ndarray:
    """int[B]: K_b = 1 + index of the first image with SE >= threshold, else T."""
    se = np.asarray(se_bt)
    yes = se >= threshold
    t = se.shape[1]
    return np.where(yes.any(axis=1), yes.argmax(axis=1) + 1, t)


def active_mask(k_b, t: int) -> np.ndarray:
    """float[B, T]: 1 for the images a row actually produced (i <= K_b)."""
    return (np.arange(1, t + 1)[None, :] <= np.asarray(k_b)[:, None]).astype(np.float32)


def r_gen(rqa_bt, k_b) -> np.ndarray:
    """float[B]: sum_{i<K} R_QA(I_i) + (T - K + 1) R_QA(I_K)."""
    rqa = np.asarray(rqa_bt, np.float64)
    k = np.asarray(k_b)
    t = rqa.shape[1]
    before = (rqa * active_mask(k - 1, t)).sum(axis=1)
    last = rqa[np.arange(len(k)), k - 1]
    return (before + (t - k + 1) * last).astype(np.float32)


def r_comp(rqa_bt, se_bt, k_b) -> np.ndarray:
    """float[B]: sum_{i<=K} (1 - |R_QA(I_i) - SE(I_i)|) * T / K."""
    rqa = np.asarray(rqa_bt, np.float64)
    se = np.asarray(se_bt, np.float64)
    k = np.asarray(k_b)
    t = rqa.shape[1]
    agree = (1.0 - np.abs(rqa - se)) * active_mask(k, t)
    return (agree.sum(axis=1) * t / k).astype(np.float32)


def reflect(params, config, tokenizer, input_ids_bl, attention_mask_bl, prompts, rng,
            options: sampler_lib.SampleOptions, max_images: int = 3, threshold: float = 0.5,
            question_template: str = DEFAULT_QUESTION, max_text_tokens: int = 64):
    """Run the loop for B left-padded prompts; returns a dict of numpy arrays:

    image_ids [B, T, N], self_eval [B, T] (SE of every image), num_images [B] (K_b),
    active [B, T] (1 for images the loop produced). The policy judges itself (its
    understanding path, image tokens VQ-decoded in-graph).
    """
    judge = VLMJudge(params, config, tokenizer, max_text_tokens=max_text_tokens)
    questions = [question_template.format(prompt=p, reasoning="") for p in prompts]
    images, evals = [], []
    for i in range(max_images):
        rollout = sampler_lib.sample(params, config, input_ids_bl, attention_mask_bl,
                                     jax.random.fold_in(rng, i), options)
        se = judge.prob_yes(questions, codes=rollout.image_ids_bn, decoder=(params, config))
        images.append(np.asarray(rollout.image_ids_bn))
        evals.append(np.asarray(se))
    se_bt = np.stack(evals, axis=1)
    k_b = stop_index(se_bt, threshold)
    return {"image_ids": np.stack(images, axis=1), "self_eval": se_bt, "num_images": k_b,
            "active": active_mask(k_b, max_images)}
