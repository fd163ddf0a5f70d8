"""Generation from a loaded model: prompts (or Hugging Face style input ids) -> reasoning and images.

    samples = generate(params, config, tokenizer, ["a red circle left of a blue square"],
                       think=True, seed=0)
    samples[0].image  # uint8 [H, W, 3]

Prompts are templated, tokenised and left padded up to a length bucket (nearby prompt lengths
share one compiled sampler), sampled with the jitted KV-cache sampler (CFG) and decoded by the
VQ, one piece of the batch per CPU core on a CPU host.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import numpy as np

from jaxgen.concurrent_batches import map_batches, split_batches
from jaxgen.data.templates import generation_prompt
from jaxgen.errors import UserError
from jaxgen.models import janus
from jaxgen.models.config import JanusConfig
from jaxgen.sampling.sampler import SampleOptions, check_context, context_length, sample

# Prompts are left padded up to a multiple of this many tokens so that nearby prompt lengths
# share one compiled sampler.
PROMPT_LENGTH_BUCKET = 16
# Reasoning budget when think=True and no max_think_tokens is given (capped by the context).
DEFAULT_MAX_THINK_TOKENS = 256


@dataclasses.dataclass
class Sample:
    """One generated image and what led to it."""
    prompt: Optional[str]  # the user's prompt (or the decoded input ids; None without tokenizer)
    reasoning: str  # the chain of thought ('' when think=False or no tokenizer)
    image_tokens: np.ndarray  # int32 [N], row-major VQ grid
    image: np.ndarray  # uint8 [H, W, 3]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _left_pad(rows: Sequence[Sequence[int]], masks: Sequence[Sequence[bool]], length: int, pad_id: int):
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, (row, m) in enumerate(zip(rows, masks)):
        if len(row):
            ids[i, length - len(row):] = row
            mask[i, length - len(row):] = m
    return ids, mask


def pixels_to_uint8(pixels) -> np.ndarray:
    """Decoder output in [-1, 1] -> uint8, as Hugging Face post-processes: (x + 1) 127.5, clipped."""
    return np.clip((np.asarray(pixels, np.float32) + 1.0) * 127.5, 0, 255).astype(np.uint8)


_vq_decode_jit = jax.jit(janus.vq_decode, static_argnums=1)


def _tokenize(tokenizer, prompts):
    if tokenizer is None:
        raise UserError("this model has no tokenizer; pass input_ids (and attention_mask) "
                        "instead of prompt strings, or load a directory with tokenizer.json")
    bos = tokenizer.bos_token or ""
    rows = [tokenizer(generation_prompt(p, bos), add_special_tokens=False)["input_ids"]
            for p in prompts]
    return rows, [[True] * len(r) for r in rows]


def prompt_rows(tokenizer, prompts=None, input_ids=None, attention_mask=None, boi_token_id=None):
    """(texts, unpadded id rows, mask rows) from prompt strings or left-padded input ids.

    A trailing <begin_of_image> (`boi_token_id`), as JanusProcessor(..., generation_mode="image")
    ends its prompts, is dropped: the sampler writes it after the (optional) reasoning."""
    if (prompts is None) == (input_ids is None):
        raise UserError("pass exactly one of prompts (strings) or input_ids")
    if prompts is not None:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise UserError("prompts is empty; pass at least one prompt string")
        rows, masks = _tokenize(tokenizer, prompts)
        return prompts, rows, masks
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    mask = np.ones_like(ids, bool) if attention_mask is None else np.asarray(attention_mask, bool)
    if mask.ndim == 1:
        mask = mask[None]
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise UserError(f"input_ids must be [batch, length] with a matching attention_mask; got "
                        f"{ids.shape} and {mask.shape}")
    if not mask[:, -1].all():
        raise UserError("input_ids must be left padded: every row's last attention_mask entry "
                        "must be 1")
    # Drop the caller's left padding; it is re-added up to the length bucket.
    rows = [ids[i, np.argmax(mask[i]):].tolist() for i in range(len(ids))]
    masks = [mask[i, np.argmax(mask[i]):].tolist() for i in range(len(ids))]
    if boi_token_id is not None:
        ends = [bool(r) and r[-1] == boi_token_id for r in rows]
        if any(ends) and not all(ends):
            raise UserError("some input_ids rows end with <begin_of_image> and some do not; end "
                            "all of them with it (as JanusProcessor writes them) or none")
        if all(ends):
            rows, masks = [r[:-1] for r in rows], [m[:-1] for m in masks]
    texts = ([tokenizer.decode(r, skip_special_tokens=True) for r in rows]
             if tokenizer is not None else [None] * len(rows))
    return texts, rows, masks


def think_budget(config: JanusConfig, think, max_think_tokens, prompt_len) -> int:
    """Reasoning tokens to allow: 0 without think, else the given or the default budget."""
    if not think:
        return 0
    if max_think_tokens is not None:
        if max_think_tokens < 1:
            raise UserError(f"think=True needs max_think_tokens >= 1, got {max_think_tokens}")
        return int(max_think_tokens)
    room = config.text.max_position_embeddings - context_length(config, prompt_len, 0)
    return max(min(DEFAULT_MAX_THINK_TOKENS, room), 1)


def generate(params, config: JanusConfig, tokenizer=None, prompts=None, input_ids=None,
             attention_mask=None, cfg_weight: float = 5.0, temperature: float = 1.0,
             greedy: bool = False, num_samples: int = 1, think: bool = False,
             max_think_tokens: Optional[int] = None, seed: int = 0, *, top_k: int = 0,
             top_p: float = 1.0, image_temperature: Optional[float] = None,
             uncond_hides: str = "prompt", return_rollout: bool = False):
    """Generate num_samples images per prompt (prompt-major order) -> list of Sample.

    prompts: a string or list of strings (templated, tokenised, left padded), or
    input_ids / attention_mask: pre-tokenised prompts ending with '<|Assistant|>:' (a trailing
    <begin_of_image>, as the Hugging Face processor writes for image generation, is accepted).
    think: write a chain of thought (at most max_think_tokens; default: as many as fit, up to
    DEFAULT_MAX_THINK_TOKENS) before <begin_of_image>. temperature applies to reasoning and,
    unless image_temperature is given, to image tokens. return_rollout: also return the
    sampler's Rollout (as `(samples, rollout)`).
    """
    if num_samples < 1:
        raise UserError(f"num_samples must be >= 1, got {num_samples}")
    texts, rows, masks = prompt_rows(tokenizer, prompts, input_ids, attention_mask,
                                     config.boi_token_id)
    longest = max(len(r) for r in rows)
    budget = think_budget(config, think, max_think_tokens, longest)
    check_context(config, longest, budget)
    room = config.text.max_position_embeddings - context_length(config, 0, budget)
    length = max(longest, min(_round_up(longest, PROMPT_LENGTH_BUCKET), room))
    ids, mask = _left_pad(rows, masks, length, config.pad_token_id)
    ids, mask = np.repeat(ids, num_samples, 0), np.repeat(mask, num_samples, 0)
    texts = [t for t in texts for _ in range(num_samples)]
    options = SampleOptions(
        max_think_tokens=budget, temperature=temperature, top_k=top_k, top_p=top_p,
        greedy=greedy, cfg_weight=cfg_weight, uncond_hides=uncond_hides,
        image_temperature=temperature if image_temperature is None else image_temperature)
    rollout = sample(params, config, ids, mask, jax.random.PRNGKey(seed), options)
    image_ids = np.asarray(rollout.image_ids_bn, np.int32)
    images = map_batches(  # on a CPU, one piece of the batch per core (one-core convolutions)
        lambda ids: pixels_to_uint8(_vq_decode_jit(params, config, ids)),
        image_ids, split_batches(len(image_ids)))
    think_ids = np.asarray(rollout.think_ids_bt)
    think_mask = np.asarray(rollout.think_mask_bt, bool)
    samples = []
    for i in range(len(texts)):
        reasoning = ""
        if tokenizer is not None and think_mask[i].any():
            reasoning = tokenizer.decode(think_ids[i][think_mask[i]].tolist(),
                                         skip_special_tokens=False)
        samples.append(Sample(prompt=texts[i], reasoning=reasoning, image_tokens=image_ids[i],
                              image=images[i]))
    return (samples, rollout) if return_rollout else samples
