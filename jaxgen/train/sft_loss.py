"""The SFT loss: teacher-forced NLL of the rows' targets, weighted by target kind.

Loss weights of the targets (config.loss): reasoning text `text_weight` (ReasonGen-R1: 2.0), the
<begin_of_image> token `boi_weight` (0.0), image codes `image_weight` (1.0), <end_of_image>
`eoi_weight` (0.0), answers `answer_weight`, prompt 0. Prompt dropout (`data.prompt_dropout`,
default 0.1) replaces a generation row's prompt (all but BOS) by <pad> so the model learns the
unconditional branch of CFG; with `data.dropout_hides='prompt_and_reasoning'` the reasoning is
hidden too. Dropped rows train only the image tokens.
The loss is sum(weight * NLL) / sum(weight) over the global batch (gradient accumulation
included). Rows are as `jaxgen.train.sft_rows` builds them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import UserError
from jaxgen.models import janus
from jaxgen.train import losses
from jaxgen.train.sft_rows import (KIND_ANSWER, KIND_BOI, KIND_EOI, KIND_IMAGE, KIND_NAMES,
                                   KIND_NONE, KIND_TEXT, TASK_GENERATION)


def forward_hidden(params, mc, batch):
    """Teacher-forced final hidden states [B, L, D]. Rows are right-padded single sequences (as
    sft_rows builds them; plain causal attention, janus.decode's causal_only) or, when the
    batch has 'segment', packed rows (sft_rows.pack_rows)."""
    inputs, is_img = batch["inputs"], batch["input_is_image"]
    text_ids = jnp.where(is_img, mc.pad_token_id, inputs)
    emb = janus.embed_text(params, mc, text_ids)
    # every image in a row (generation or VQ-code understanding) is num_image_tokens contiguous
    # codes, so a code's index in its image is the running count of image inputs modulo that
    index = (jnp.cumsum(is_img, axis=1) - 1) % mc.num_image_tokens
    img_emb = janus.embed_image_codes(params, mc, jnp.where(is_img, inputs, 0), index)
    emb = jnp.where(is_img[..., None], img_emb.astype(emb.dtype), emb)
    if "pixels" in batch:
        pixels = batch["pixels"].astype(jnp.float32) / 127.5 - 1.0
        und = janus.embed_understanding_images(params, mc, pixels)
        emb = janus.merge_image_embeds(emb, text_ids, und, mc.image_token_id)
    # packed rows: positions restart per sequence and attention stays inside it
    positions = batch.get("positions")
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(inputs.shape[1], dtype=jnp.int32), inputs.shape)
    segments = batch.get("segment")
    hidden, _ = janus.decode(params, mc, emb, positions, batch["valid"], segment_ids_bl=segments,
                             causal_only=segments is None)
    return hidden


def forward_logits(params, mc, batch):
    """Teacher-forced (text_logits, image_logits), each [B, L, V_*] (both heads everywhere)."""
    hidden = forward_hidden(params, mc, batch)
    return janus.text_logits(params, mc, hidden), janus.image_logits(params, mc, hidden)


# Targets read from the text head (lm_head); KIND_IMAGE targets are read from the image head.
TEXT_HEAD_KINDS = (KIND_TEXT, KIND_BOI, KIND_EOI, KIND_ANSWER)


def head_capacities(datasets, round_to: int = 8) -> dict:
    """How many positions per row each head must be evaluated at: the most text-head targets
    (TEXT_HEAD_KINDS) and image targets in any row of `datasets` (arrays as built by
    sft_data.build_dataset; None entries skipped), rounded up to `round_to`, at most the row
    length.

    A generation row of Janus-Pro shapes has ~50 text targets and 576 image targets among 624
    positions: evaluating lm_head (vocab 102400) only at the text ones saves ~13% of the step's
    FLOPs and the float32 log-softmax over [B, L, 102400]."""
    text, image, length = 0, 0, 0
    for arrays in datasets:
        if arrays is None:
            continue
        kind = np.asarray(arrays["target_kind"])
        length = max(length, kind.shape[1])
        text = max(text, int(np.isin(kind, TEXT_HEAD_KINDS).sum(1).max()))
        image = max(image, int((kind == KIND_IMAGE).sum(1).max()))
    up = lambda n: min(length, -(-max(n, 1) // round_to) * round_to)  # noqa: E731
    return {"text": up(text), "image": up(image)}


def select_positions(pred_bl, capacity: int):
    """The positions where pred_bl holds, first `capacity` of them in order per row: (indices
    [B, capacity] int32, valid [B, capacity] bool). Rows with fewer are padded with other
    positions (valid False)."""
    idx = jnp.argsort(jnp.logical_not(pred_bl).astype(jnp.int8), axis=1, stable=True)
    idx = idx[:, :capacity].astype(jnp.int32)
    return idx, jnp.take_along_axis(pred_bl, idx, axis=1)


def kind_weights(lc) -> jnp.ndarray:
    """Loss weight per target kind (index = KIND_*)."""
    return jnp.array([0.0, lc.text_weight, lc.boi_weight, lc.image_weight, lc.eoi_weight,
                      lc.answer_weight], jnp.float32)


def apply_prompt_dropout(batch, rng, mc, prob: float, hides: str):
    """Randomly replace generation sequences' prompt (and reasoning) by <pad>.

    Returns (batch, dropped_bl): the tokens of dropped sequences (one draw per sequence of a
    packed row), whose text loss the caller zeroes."""
    segment = batch.get("segment", batch["valid"]).astype(jnp.int32)  # unpacked: 1 per row
    if prob <= 0:
        return batch, jnp.zeros(segment.shape, bool)
    # one draw per (row, segment id); segment ids are < row length
    drop_bs = jax.random.bernoulli(rng, prob, segment.shape)
    if "task" in batch:
        drop_bs = drop_bs & (batch["task"] == TASK_GENERATION)[:, None]
    dropped = jnp.take_along_axis(drop_bs, segment, axis=1) & (segment > 0)
    hidden_region = batch["region"] == 1
    if hides == "prompt_and_reasoning":
        hidden_region = hidden_region | (batch["region"] == 2)
    elif hides != "prompt":
        raise UserError(f"unknown dropout_hides {hides!r}; use 'prompt' or 'prompt_and_reasoning'")
    out = dict(batch)
    out["inputs"] = jnp.where(dropped & hidden_region, mc.pad_token_id, batch["inputs"])
    return out, dropped


def make_loss_fn(mc, config, capacities: dict | None = None):
    """The SFT loss f(params, batch, rng) (see the module docstring). capacities ({'text',
    'image'}, head_capacities): evaluate each head only at that many gathered target positions
    per row; None: both heads at every position (the same loss, more work)."""
    lc, dc = config.loss, config.data
    weights_k = kind_weights(lc)
    prob, hides = float(dc.prompt_dropout), str(dc.dropout_hides)
    heads = ((janus.text_logits, jnp.asarray(TEXT_HEAD_KINDS), "text"),
             (janus.image_logits, jnp.asarray([KIND_IMAGE]), "image"))

    def head_nll(head, kinds, capacity, params, hidden, tgt, kind, w):
        """(nll, argmax == target, kind, weight), each [B, capacity or L], for one head."""
        mine = jnp.isin(kind, kinds)
        if capacity is not None:
            idx, mine = select_positions(mine, capacity)
            hidden = jnp.take_along_axis(hidden, idx[..., None], axis=1)
            tgt, kind, w = (jnp.take_along_axis(a, idx, axis=1) for a in (tgt, kind, w))
        logits = head(params, mc, hidden)
        tgt = jnp.where(mine, tgt, 0)  # other heads' targets may be outside this vocab
        kind = jnp.where(mine, kind, KIND_NONE)
        return (losses.token_nll(logits, tgt), jnp.argmax(logits, -1) == tgt, kind,
                jnp.where(mine, w, 0.0))

    def loss_fn(params, batch, rng):
        batch, dropped = apply_prompt_dropout(batch, rng, mc, prob, hides)
        hidden = forward_hidden(params, mc, batch)
        kind = batch["target_kind"].astype(jnp.int32)
        w = weights_k[kind]
        # Sequences whose prompt was dropped only train the image (and its boundary tokens).
        w = jnp.where(dropped & (kind == KIND_TEXT), 0.0, w)
        parts = [head_nll(head, kinds, (capacities or {}).get(name), params, hidden,
                          batch["targets"], kind, w) for head, kinds, name in heads]
        # both heads' positions side by side: [B, text positions + image positions]
        nll, acc, kind, w = (jnp.concatenate(x, axis=1) for x in zip(*parts))
        num, den = losses.weighted_sum(nll, w)
        metrics = {"loss": (num, den)}
        for k, name in KIND_NAMES.items():
            metrics[f"{name}_loss"] = losses.weighted_sum(nll, kind == k)
        metrics["image_acc"] = losses.weighted_sum(acc, kind == KIND_IMAGE)
        metrics["answer_acc"] = losses.weighted_sum(acc, kind == KIND_ANSWER)
        return num, {"denominator": den, "metrics": metrics}

    return loss_fn

