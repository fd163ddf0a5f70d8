"""The unified model's understanding path as a batched, jitted service on the mesh.

Kernels (pure, jitted once per shape): the prompt state of [question; image] through the
understanding path (its SigLIP tower, or its VQ encoder for a model that reads images as VQ
codes), the yes/no logit of the first answer token, answer log-likelihoods, greedy answers with a
KV cache; `..._from_codes` variants decode the policy's image tokens with the policy's VQ
decoder inside the same program, so images and weights never leave the device.

`VLMJudge`: a judge checkpoint placed once on the mesh (shardings from jaxgen.parallel), its
questions tokenised per batch and left padded to a fixed length (no recompilation between
iterations). Reward factories built on it live in jaxgen.rewards.vlm_judge.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import parallel
from jaxgen.data import templates
from jaxgen.errors import PromptTooLongError, UserError
from jaxgen.models import janus


# ------------------------------------------------------------------------- jitted kernels


def uint8_to_unit(images_bhwc):
    """uint8 pixels -> float32 in [-1, 1] (the understanding path's input range)."""
    return jnp.asarray(images_bhwc, jnp.float32) / 127.5 - 1.0


def quantise_pixels(pixels_bhwc):
    """Round decoded pixels to the 256 levels of a saved image, so the judge sees on device
    exactly what it would see from the uint8 image on the host."""
    x = jnp.round((jnp.clip(pixels_bhwc, -1.0, 1.0) + 1.0) * 127.5)
    return x / 127.5 - 1.0


def decoded_pixels(policy_params, policy_config, codes_bn):
    """float32[B, H, W, 3]: policy image tokens VQ-decoded and rounded as a saved image would be
    (traced inside the jitted reward kernels, so pixels never leave the device)."""
    return quantise_pixels(janus.vq_decode(policy_params, policy_config, codes_bn))


def _resize(pixels_bhwc, size: int):
    b, h, w, c = pixels_bhwc.shape
    if (h, w) == (size, size):
        return pixels_bhwc
    return jax.image.resize(pixels_bhwc, (b, size, size, c), "bilinear")


def prompt_state(params, config, ids_bl, mask_bl, pixels_bhwc):
    emb = janus.embed_text(params, config, ids_bl)
    if pixels_bhwc is not None:
        img = janus.understanding_embeds(
            params, config, _resize(pixels_bhwc, config.understanding_image_size))
        emb = janus.merge_image_embeds(emb, ids_bl, img, config.image_token_id)
    positions = jnp.maximum(jnp.cumsum(mask_bl, axis=1) - 1, 0).astype(jnp.int32)
    return emb, positions


def yes_no_logit(params, config, ids_bl, mask_bl, pixels_bhwc, yes_ids, no_ids):
    """float32[B]: log P(yes) - log P(no) of the first answer token (pixels may be None);
    differentiable in params (the self-reflection loss trains it)."""
    emb, positions = prompt_state(params, config, ids_bl, mask_bl, pixels_bhwc)
    hidden, _ = janus.decode(params, config, emb, positions, mask_bl.astype(bool))
    logits = janus.text_logits(params, config, hidden[:, -1:])[:, 0].astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    log_yes = jax.nn.logsumexp(logp[:, jnp.array(yes_ids)], axis=-1)
    log_no = jax.nn.logsumexp(logp[:, jnp.array(no_ids)], axis=-1)
    return log_yes - log_no


# The jitted passes below take `activations`, a static (mesh, layout) or None: on a mesh the
# judge's activations stay split over the batch (parallel.activations_context).


@functools.partial(jax.jit, static_argnames=("config", "yes_ids", "no_ids", "activations"))
def yes_probability(params, config, ids_bl, mask_bl, pixels_bhwc, yes_ids, no_ids,
                    activations=None):
    """float32[B]: P(yes) / (P(yes) + P(no)) of the first answer token (pixels may be None)."""
    with parallel.activations_context(activations):
        return jax.nn.sigmoid(yes_no_logit(params, config, ids_bl, mask_bl, pixels_bhwc, yes_ids,
                                           no_ids))  # = p_yes / (p_yes + p_no), stable


@functools.partial(jax.jit, static_argnames=("config", "policy_config", "yes_ids", "no_ids",
                                             "activations"))
def yes_no_logit_from_codes(params, config, policy_params, policy_config, ids_bl, mask_bl,
                            codes_bn, yes_ids, no_ids, activations=None):
    """Judge policy image tokens: VQ-decode with the policy in-graph, then `yes_no_logit`."""
    with parallel.activations_context(activations):
        pixels = decoded_pixels(policy_params, policy_config, codes_bn)
        return yes_no_logit(params, config, ids_bl, mask_bl, pixels, yes_ids, no_ids)


def yes_probability_from_codes(params, config, policy_params, policy_config, ids_bl, mask_bl,
                               codes_bn, yes_ids, no_ids):
    """`yes_probability` of policy image tokens decoded in-graph."""
    return jax.nn.sigmoid(yes_no_logit_from_codes(params, config, policy_params, policy_config,
                                                  ids_bl, mask_bl, codes_bn, yes_ids, no_ids))


def answer_log_softmax(params, config, ids_bl, mask_bl, pixels_bhwc, answer_bt, answer_mask_bt):
    """float32[B, T, V]: log p(. | image, question, answer_<t) at every answer position.

    The question (with its image placeholders) is left padded (ids / mask [B, L]) and the answer
    right padded (answer / answer_mask [B, T]), so one teacher-forced pass scores every row."""
    emb, _ = prompt_state(params, config, ids_bl, mask_bl, pixels_bhwc)
    emb = jnp.concatenate([emb, janus.embed_text(params, config, answer_bt).astype(emb.dtype)], 1)
    mask = jnp.concatenate([mask_bl, answer_mask_bt], 1)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
    hidden, _ = janus.decode(params, config, emb, positions, mask.astype(bool))
    # the last question position predicts the first answer token, and so on
    l = ids_bl.shape[1]
    logits = janus.text_logits(params, config, hidden[:, l - 1:-1]).astype(jnp.float32)
    return jax.nn.log_softmax(logits, axis=-1)


def summed_answer_logp(logp_btv, answer_bt, answer_mask_bt):
    """float32[B]: sum over the answer's tokens of their log-probs."""
    logp = jnp.take_along_axis(logp_btv, answer_bt[..., None], -1)[..., 0]
    return jnp.sum(logp * answer_mask_bt, axis=-1)


def _answer_log_likelihood(params, config, ids_bl, mask_bl, pixels_bhwc, answer_bt,
                           answer_mask_bt):
    logp = answer_log_softmax(params, config, ids_bl, mask_bl, pixels_bhwc, answer_bt,
                              answer_mask_bt)
    return summed_answer_logp(logp, answer_bt, answer_mask_bt)


@functools.partial(jax.jit, static_argnames=("config", "activations"))
def answer_log_likelihood(params, config, ids_bl, mask_bl, pixels_bhwc, answer_bt, answer_mask_bt,
                          activations=None):
    """float32[B]: sum over answer tokens of log p(answer_t | image, question, answer_<t)."""
    with parallel.activations_context(activations):
        return _answer_log_likelihood(params, config, ids_bl, mask_bl, pixels_bhwc, answer_bt,
                                      answer_mask_bt)


@functools.partial(jax.jit, static_argnames=("config", "policy_config", "activations"))
def answer_log_likelihood_from_codes(params, config, policy_params, policy_config, ids_bl, mask_bl,
                                     codes_bn, answer_bt, answer_mask_bt, activations=None):
    """`answer_log_likelihood` of policy image tokens, VQ-decoded with the policy in-graph."""
    with parallel.activations_context(activations):
        pixels = decoded_pixels(policy_params, policy_config, codes_bn)
        return _answer_log_likelihood(params, config, ids_bl, mask_bl, pixels, answer_bt,
                                      answer_mask_bt)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "activations"))
def greedy_answer(params, config, ids_bl, mask_bl, pixels_bhwc, max_new_tokens: int,
                  activations=None):
    """int32[B, max_new_tokens]: greedy continuation with a KV cache (decode loop in fori_loop)."""
    with parallel.activations_context(activations):
        return _greedy_answer(params, config, ids_bl, mask_bl, pixels_bhwc, max_new_tokens)


def _greedy_answer(params, config, ids_bl, mask_bl, pixels_bhwc, max_new_tokens: int):
    b, l = ids_bl.shape
    emb, positions = prompt_state(params, config, ids_bl, mask_bl, pixels_bhwc)
    total = l + max_new_tokens
    kv_mask = jnp.concatenate([mask_bl.astype(bool), jnp.ones((b, max_new_tokens), bool)], 1)
    cache = janus.init_cache(config, b, total, emb.dtype)
    hidden, cache = janus.decode(params, config, emb, positions, kv_mask, cache, 0)
    first = jnp.argmax(janus.text_logits(params, config, hidden[:, -1:])[:, 0], -1)
    next_pos = positions[:, -1:] + 1

    def step(t, carry):
        cache, tok, out = carry
        out = out.at[:, t].set(tok)
        e = janus.embed_text(params, config, tok[:, None].astype(jnp.int32))
        h, cache = janus.decode(params, config, e, next_pos + t, kv_mask, cache, l + t)
        tok = jnp.argmax(janus.text_logits(params, config, h)[:, 0], -1)
        return cache, tok, out

    out = jnp.zeros((b, max_new_tokens), jnp.int32)
    _, _, out = jax.lax.fori_loop(0, max_new_tokens, step, (cache, first.astype(jnp.int32), out))
    return out


# -------------------------------------------------------------------------------- parsing


_BOXED = re.compile(r"\\?boxed\s*\{\s*(?:\\text\s*\{)?\s*([^{}]*?)\s*\}?\s*\}")
_TRUE = {"1", "1.0", "yes", "true", "correct"}
_FALSE = {"0", "0.0", "no", "false", "incorrect"}


def parse_boxed(text: str, default: float = 0.0) -> float:
    """The last \\boxed{...} answer as 1.0 / 0.0 ('1', '1.0', 'yes', '\\text{1}', spaces ok);
    `default` when there is none or it is not a 0/1 answer."""
    found = _BOXED.findall(text or "")
    for raw in reversed(found):
        value = raw.strip().strip("$ .").lower()
        if value in _TRUE:
            return 1.0
        if value in _FALSE:
            return 0.0
    return default


# ---------------------------------------------------------------------------------- judge


def first_token_ids(tokenizer, words) -> tuple:
    ids = []
    for w in words:
        enc = tokenizer.encode(w, add_special_tokens=False)
        if enc:
            ids.append(int(enc[0]))
    if not ids:
        raise UserError(f"none of the answer words {list(words)} tokenise; set the judge's "
                        "yes_words / no_words to words in its vocabulary")
    return tuple(sorted(set(ids)))


class VLMJudge:
    """A unified-architecture model used as a judge, its params resident on the mesh.

    params_fn: params, or a zero-argument function returning them (the policy judging itself).
    max_text_tokens: room for question text; prompts are left-padded to
      max_text_tokens (+ the image placeholders) so every batch has the same shape.
    """

    def __init__(self, params, config, tokenizer, mesh=None, layout: str = "fsdp",
                 yes_words=("yes", "Yes", " yes", " Yes"), no_words=("no", "No", " no", " No"),
                 max_text_tokens: int = 96):
        self.config = config
        self.tokenizer = tokenizer
        self.mesh = mesh
        # the jitted passes' static activation sharding: split over the batch on a mesh
        self.activations = None if mesh is None else (mesh, layout)
        self.max_text_tokens = int(max_text_tokens)
        if callable(params):
            self._params_fn = params
        else:
            if mesh is not None:
                shardings = parallel.param_shardings(params, janus.param_logical_axes(config),
                                                     mesh, layout)
                params = parallel.shard_tree(params, shardings)
            self._params_fn = lambda: params
        yes_ids, no_ids = first_token_ids(tokenizer, yes_words), first_token_ids(tokenizer, no_words)
        # A first token both answers start with (e.g. a bare space piece) says nothing: drop it.
        shared = set(yes_ids) & set(no_ids)
        self.yes_ids = tuple(i for i in yes_ids if i not in shared)
        self.no_ids = tuple(i for i in no_ids if i not in shared)
        if not self.yes_ids or not self.no_ids:
            raise UserError(f"the judge's yes words {list(yes_words)} and no words "
                            f"{list(no_words)} start with the same tokens; pick other words")
        self.bos = tokenizer.bos_token or "<bos>"

    @property
    def params(self):
        return self._params_fn()

    def _texts(self, questions, with_image: bool):
        n = self.config.num_understanding_tokens
        if with_image:
            return [templates.understanding_prompt(q, self.bos, n) for q in questions]
        return [templates.generation_prompt(q, self.bos) for q in questions]

    def tokenize(self, questions, with_image: bool):
        """Left-padded (ids int32[B, L], mask int32[B, L]) with L fixed per (judge, with_image)."""
        texts = self._texts(questions, with_image)
        length = self.max_text_tokens + (self.config.num_understanding_tokens if with_image else 0)
        pad = self.config.pad_token_id
        ids = np.full((len(texts), length), pad, np.int32)
        mask = np.zeros((len(texts), length), np.int32)
        for i, t in enumerate(texts):
            enc = self.tokenizer.encode(t, add_special_tokens=False)
            if len(enc) > length:
                raise PromptTooLongError(
                    f"judge question of {len(enc)} tokens does not fit in {length}; raise the "
                    "reward's max_text_tokens or shorten question_template")
            ids[i, length - len(enc):] = enc
            mask[i, length - len(enc):] = 1
        return self._put(ids), self._put(mask)

    def _put(self, x):
        if self.mesh is None:
            return jnp.asarray(x)
        if x.shape[0] % parallel.data_parallel_size(self.mesh) == 0:
            return jax.device_put(x, parallel.batch_sharding(self.mesh))
        return jax.device_put(x, parallel.replicated(self.mesh))

    def yes_no_logit(self, questions, codes, decoder):
        """float32[B] log P(yes) - log P(no) of policy image tokens (codes int32[B, N]) decoded
        in-graph by decoder=(policy_params, policy_config)."""
        ids, mask = self.tokenize(questions, with_image=True)
        policy_params, policy_config = decoder
        return yes_no_logit_from_codes(self.params, self.config, policy_params, policy_config,
                                       ids, mask, codes, self.yes_ids, self.no_ids,
                                       activations=self.activations)

    def prob_yes(self, questions, images=None, codes=None, decoder=None):
        """float32[B] P(yes)/(P(yes)+P(no)).

        images: uint8[B,H,W,3] host pixels or float [-1,1] device pixels; codes: int32[B,N]
        policy image tokens with decoder=(policy_params, policy_config) to decode in-graph;
        neither: a text-only question.
        """
        if codes is not None:
            return jax.nn.sigmoid(self.yes_no_logit(questions, codes, decoder))
        ids, mask = self.tokenize(questions, with_image=images is not None)
        pixels = None
        if images is not None:
            images = images if isinstance(images, jax.Array) else np.asarray(images)
            pixels = uint8_to_unit(images) if images.dtype == np.uint8 else images
        return yes_probability(self.params, self.config, ids, mask, pixels, self.yes_ids,
                               self.no_ids, activations=self.activations)

    def tokenize_answers(self, answers, max_answer_tokens: int):
        """Right-padded (ids int32[B, T], mask int32[B, T]) of answers as the SFT understanding
        rows spell them: the answer's tokens, then <eos>."""
        ids = np.full((len(answers), max_answer_tokens), self.config.pad_token_id, np.int32)
        mask = np.zeros((len(answers), max_answer_tokens), np.int32)
        for i, a in enumerate(answers):
            enc = self.tokenizer.encode(a, add_special_tokens=False) + [self.config.eos_token_id]
            if len(enc) > max_answer_tokens:
                raise PromptTooLongError(
                    f"answer of {len(enc)} tokens (with <eos>) does not fit in {max_answer_tokens};"
                    " raise the reward's max_answer_tokens")
            ids[i, :len(enc)] = enc
            mask[i, :len(enc)] = 1
        return self._put(ids), self._put(mask)

    def answer_logprob(self, questions, answers, images=None, codes=None, decoder=None,
                       max_answer_tokens: int = 48):
        """(float32[B] sum of the answers' token log-probs given image and question, int32[B]
        answer lengths). images / codes / decoder as in `prob_yes` (one of them is needed)."""
        ids, mask = self.tokenize(questions, with_image=True)
        ans, ans_mask = self.tokenize_answers(answers, max_answer_tokens)
        if codes is not None:
            policy_params, policy_config = decoder
            total = answer_log_likelihood_from_codes(self.params, self.config, policy_params,
                                                     policy_config, ids, mask, codes, ans, ans_mask,
                                                     activations=self.activations)
        else:
            if images is None:
                raise UserError("answer_logprob needs images or image tokens")
            images = images if isinstance(images, jax.Array) else np.asarray(images)
            pixels = uint8_to_unit(images) if images.dtype == np.uint8 else images
            total = answer_log_likelihood(self.params, self.config, ids, mask, pixels, ans,
                                          ans_mask, activations=self.activations)
        return total, jnp.sum(ans_mask, axis=-1)

    def answer(self, questions, images=None, max_new_tokens: int = 32) -> list[str]:
        """Greedy text answers (cut at EOS) to image questions."""
        ids, mask = self.tokenize(questions, with_image=images is not None)
        pixels = None if images is None else uint8_to_unit(np.asarray(images))
        out = parallel.to_host(greedy_answer(self.params, self.config, ids, mask, pixels,
                                             int(max_new_tokens), activations=self.activations))
        texts = []
        for row in out:
            row = list(row)
            if self.config.eos_token_id in row:
                row = row[:row.index(self.config.eos_token_id)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=False))
        return texts
