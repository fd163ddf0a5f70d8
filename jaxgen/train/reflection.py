"""Janus-Pro-R1 self-reflection loop and its rewards R_Gen and R_Comp.

Loop: generate an image; the same model judges it in text through its understanding path
(SE = P(yes)/(P(yes)+P(no)) to a question about the prompt); if it says no, generate again, at
most T images. With fixed shapes every row generates all T images in lockstep (one jitted
sampler call per round) and the stop index K_b (1-based: the first image judged yes, else T)
masks what comes after; nothing recompiles.

Simplification (stated): a regeneration is a fresh sample of the same prompt with a new key; the
paper's regeneration also conditions on the previous image and its critique, and its
self-evaluation is a written answer where here it is the first answer token (yes / no).

In GRPO (`config.reflection.max_images > 0`, jaxgen.train.grpo) a trajectory is the images a
row produced and its self-evaluation answers. The answer is sampled (yes with probability SE)
so that it is an action: R_Gen and R_Comp give the trajectory its advantage, every produced
image's tokens take it, and so does the log-probability of each answer the policy gave
(`self_eval_loss`, the same clipped surrogate), which is how R_Comp teaches the model to judge
its own images.

Rewards (Janus-Pro-R1, Pan et al. 2025), with R_QA(I_i) from an external judge:
  R_Gen  = sum_{i<K} R_QA(I_i) + (T - K + 1) R_QA(I_K)
  R_Comp = sum_{i<=K} (1 - |R_QA(I_i) - SE(I_i)|) * T / K
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import parallel
from jaxgen.rewards.vlm_judge import DEFAULT_QUESTION
from jaxgen.sampling import understanding
from jaxgen.sampling.understanding import VLMJudge
from jaxgen.train.policy_loss import clipped_surrogate
from jaxgen.sampling import sampler as sampler_lib


def stop_index(se_bt, threshold: float = 0.5) -> np.ndarray:
    """int[B]: K_b = 1 + index of the first image with SE >= threshold, else T."""
    return first_yes(np.asarray(se_bt) >= threshold)


def first_yes(said_yes_bt) -> np.ndarray:
    """int[B]: 1 + index of the first True answer of each row, else T."""
    yes = np.asarray(said_yes_bt, bool)
    return np.where(yes.any(axis=1), yes.argmax(axis=1) + 1, yes.shape[1])


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


@dataclasses.dataclass
class Reflection:
    """One self-reflection rollout of B prompts, T = max_images rounds.

    rollout: the T rounds' sampler outputs stacked round-major (row i * B + b is round i of
      prompt row b), a sampler Rollout of T * B rows.
    logit [B, T]: the policy's log P(yes) - log P(no) for each image; self_eval = sigmoid(logit).
    said_yes [B, T]: the answer given (sampled, or logit >= the threshold's logit).
    num_images [B]: K_b; active [B, T]: 1 for the images the loop produced (i <= K_b).
    question_ids / question_mask [T * B, L]: the self-evaluation questions, row order as rollout.
    """
    rollout: sampler_lib.Rollout
    logit: np.ndarray
    said_yes: np.ndarray
    num_images: np.ndarray
    active: np.ndarray
    question_ids: jax.Array
    question_mask: jax.Array

    @property
    def self_eval(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit))

    def answer_logprob(self) -> np.ndarray:
        """float32[B, T]: log-probability of each answer given (log sigmoid of +-logit)."""
        signed = np.where(self.said_yes, self.logit, -self.logit).astype(np.float64)
        return (-np.logaddexp(0.0, -signed)).astype(np.float32)

    def rows(self, x_bt) -> np.ndarray:
        """[B, T] per-image values -> [T * B] in rollout row order."""
        return np.asarray(x_bt).T.reshape(-1)


def self_eval_judge(params_fn, config, tokenizer, mesh=None, layout: str = "fsdp",
                    max_text_tokens: int = 64) -> VLMJudge:
    """The policy as its own judge (params read at call time, so it judges with current ones)."""
    return VLMJudge(params_fn, config, tokenizer, mesh=mesh, layout=layout,
                    max_text_tokens=max_text_tokens)


def reflect(params, config, judge: VLMJudge, input_ids_bl, attention_mask_bl, prompts, rng,
            options: sampler_lib.SampleOptions, max_images: int = 3, threshold: float = 0.5,
            question_template: str = DEFAULT_QUESTION, answer_rng=None,
            activations: tuple | None = None) -> Reflection:
    """Run the loop for B left-padded prompts: T sampler calls in lockstep (fixed shapes, nothing
    recompiles), each image judged by the policy through its understanding path (image tokens
    VQ-decoded in-graph).

    answer_rng: a numpy Generator to sample each answer (yes with probability SE, as a model that
    writes its verdict would; GRPO trains on these); None answers yes iff SE >= threshold.
    activations: the sampler's (mesh, layout) activation sharding (sampler.sample).
    """
    questions = [question_template.format(prompt=p, reasoning="") for p in prompts]
    rounds, logits = [], []
    for i in range(max_images):
        rollout = sampler_lib.sample(params, config, input_ids_bl, attention_mask_bl,
                                     jax.random.fold_in(rng, i), options, activations)
        # whole on every host (a collective): each host draws the same answers from answer_rng
        logits.append(parallel.to_host(judge.yes_no_logit(questions, codes=rollout.image_ids_bn,
                                                          decoder=(params, config))))
        rounds.append(rollout)
    logit = np.stack(logits, axis=1).astype(np.float32)
    se = 1.0 / (1.0 + np.exp(-logit))
    said_yes = se >= threshold if answer_rng is None else answer_rng.random(se.shape) < se
    k_b = first_yes(said_yes)
    stacked = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *rounds)
    ids, mask = judge.tokenize(questions * max_images, with_image=True)
    return Reflection(stacked, logit, said_yes, k_b, active_mask(k_b, max_images), ids, mask)


def trajectory_rewards(rqa_rows, reflection: Reflection) -> dict:
    """R_QA of each image (rows in rollout order) -> per-trajectory float32[B] streams:
    r_gen, r_comp, and r_final (R_QA of the image the loop delivers, I_K)."""
    b, t = reflection.active.shape
    rqa_bt = np.asarray(rqa_rows, np.float64).reshape(t, b).T
    k = reflection.num_images
    return {"r_gen": r_gen(rqa_bt, k), "r_comp": r_comp(rqa_bt, reflection.self_eval, k),
            "r_final": rqa_bt[np.arange(b), k - 1].astype(np.float32)}


@dataclasses.dataclass(frozen=True)
class SelfEvalSettings:
    """Static (hashable) settings of the self-evaluation term of the GRPO loss."""
    yes_ids: tuple
    no_ids: tuple
    weight: float = 1.0


def self_eval_loss(params, config, batch, adv_rows, keep_rows, s: SelfEvalSettings,
                   eps_low: float, eps_high: float, wait=0.0):
    """(scalar, metrics): the clipped surrogate of each answer's log-probability, mean over the
    produced images (keep_rows > 0), times s.weight.

    batch: dict(question_ids, question_mask [R, L], codes [R, N], said_yes [R] bool,
    old_logp [R]); the image is decoded without gradient (the VQ stays as it is). wait: a zero
    scalar added to the pixels, so the pass starts after whatever computed it.
    """
    pixels = jax.lax.stop_gradient(understanding.decoded_pixels(params, config, batch["codes"]))
    pixels = pixels + wait
    logit = understanding.yes_no_logit(params, config, batch["question_ids"], batch["question_mask"],
                                   pixels, s.yes_ids, s.no_ids)
    logp = jnp.where(batch["said_yes"], jax.nn.log_sigmoid(logit), jax.nn.log_sigmoid(-logit))
    pg, ratio = clipped_surrogate(logp, batch["old_logp"], adv_rows, eps_low, eps_high)
    keep = keep_rows.astype(jnp.float32)
    denom = jnp.maximum(keep.sum(), 1.0)
    loss = (pg * keep).sum() / denom
    metrics = {"self_eval_loss": loss, "self_eval_ratio": (ratio * keep).sum() / denom,
               "self_eval_p_yes": (jax.nn.sigmoid(logit) * keep).sum() / denom}
    return s.weight * loss, metrics
