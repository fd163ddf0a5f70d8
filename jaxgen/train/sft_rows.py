"""SFT sequences as arrays: what the data builds and the loss reads.

Generation rows (one sequence, teacher forced):
    generation_prompt(prompt) | reasoning ('plan' | 'caption' | 'none') | <begin_of_image> |
    N image codes | <end_of_image>
  each target has a kind (KIND_*): reasoning text, <begin_of_image>, image codes,
  <end_of_image>; the prompt carries none (no loss). `region` marks the prompt (1) and the
  reasoning (2), the positions prompt dropout hides.
Understanding rows (Janus-Pro-R1 self-evaluation):
    understanding_prompt(question) with the image (SigLIP embeddings, or its VQ codes inline when
    model.understanding_input is 'vq_codes') | answer <eos>
  targets of kind KIND_ANSWER on the answer tokens only.
Each row is shifted into inputs/targets and right-padded to data.seq_len; `pack_rows` packs
several sequences into one row (segment ids, positions restarting per sequence). Batches tag
their rows with TASK_GENERATION or TASK_UNDERSTANDING.
"""

from __future__ import annotations

import numpy as np

from jaxgen.data import templates
from jaxgen.errors import UserError

TASK_GENERATION, TASK_UNDERSTANDING = 0, 1
# Target kinds (for per-kind metrics); weights come from config.loss.
KIND_NONE, KIND_TEXT, KIND_BOI, KIND_IMAGE, KIND_EOI, KIND_ANSWER = 0, 1, 2, 3, 4, 5
KIND_NAMES = {KIND_TEXT: "text", KIND_BOI: "boi", KIND_IMAGE: "image", KIND_EOI: "eoi",
              KIND_ANSWER: "answer"}
REASONING_KINDS = ("plan", "caption", "none")


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of `text`, no special tokens added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def reasoning_text(record: dict, kind: str) -> str:
    """The record's reasoning of `kind` ('plan', 'caption' or 'none': empty)."""
    if kind == "none":
        return ""
    if kind not in REASONING_KINDS:
        raise UserError(f"unknown reasoning kind {kind!r}; choose one of {list(REASONING_KINDS)} "
                        "(--config.data.reasoning=...)")
    return record[kind]


def generation_row(tokenizer, mc, prompt: str, reasoning: str, codes, seq_len: int,
                   lc) -> dict:
    """Arrays for one generation row (length seq_len); see the module docstring."""
    bos = tokenizer.bos_token
    prompt_ids = encode_text(tokenizer, templates.generation_prompt(prompt, bos))
    reason_ids = encode_text(tokenizer, reasoning) if reasoning else []
    codes = [int(c) for c in codes]
    toks = prompt_ids + reason_ids + [mc.boi_token_id] + codes + [mc.eoi_token_id]
    is_img = [0] * (len(prompt_ids) + len(reason_ids) + 1) + [1] * len(codes) + [0]
    kind = [KIND_NONE] * len(prompt_ids) + [KIND_TEXT] * len(reason_ids) + [KIND_BOI] + \
        [KIND_IMAGE] * len(codes) + [KIND_EOI]
    region = [1] * len(prompt_ids) + [2] * len(reason_ids) + [0] * (len(codes) + 2)
    region[0] = 0  # BOS stays visible under prompt dropout
    return _pack(toks, is_img, kind, region, seq_len, mc, what=f"prompt {prompt!r}")


def understanding_row(tokenizer, mc, question: str, answer: str, seq_len: int,
                      codes=None) -> dict:
    """Arrays for one understanding row. With mc.understanding_input == 'siglip' the image
    placeholders stay in the ids (the batch's 'pixels' fill them); with 'vq_codes' the image's
    VQ `codes` sit inline as image inputs, exactly as a generated image does."""
    bos = tokenizer.bos_token
    n_img = mc.num_understanding_tokens
    text = templates.understanding_prompt(question, bos, n_img)
    if mc.understanding_input == "vq_codes":
        before, after = text.split(templates.IMAGE_PLACEHOLDER * n_img)
        head, tail = encode_text(tokenizer, before), encode_text(tokenizer, after)
        prompt_ids = head + [int(c) for c in codes] + tail
        is_img = [0] * len(head) + [1] * n_img + [0] * len(tail)
    else:
        prompt_ids = encode_text(tokenizer, text)
        is_img = [0] * len(prompt_ids)
    ans_ids = encode_text(tokenizer, answer) + [mc.eos_token_id]
    toks = prompt_ids + ans_ids
    kind = [KIND_NONE] * len(prompt_ids) + [KIND_ANSWER] * len(ans_ids)
    return _pack(toks, is_img + [0] * len(ans_ids), kind, [0] * len(toks), seq_len, mc,
                 what=f"question {question!r}")


def _pack(toks, is_img, kind, region, seq_len, mc, what) -> dict:
    """Shift into inputs/targets and right-pad to seq_len."""
    if len(toks) > seq_len + 1:
        raise UserError(f"{what} needs {len(toks) - 1} positions but data.seq_len={seq_len}; "
                        f"raise --config.data.seq_len to at least {len(toks) - 1}")
    n = len(toks) - 1
    pad = mc.pad_token_id

    def padded(x, fill, dtype):
        a = np.full((seq_len,), fill, dtype)
        a[:len(x)] = x
        return a

    return {
        "inputs": padded(toks[:-1], pad, np.int32),
        "input_is_image": padded(is_img[:-1], 0, np.bool_),
        "targets": padded(toks[1:], 0, np.int32),
        "target_is_image": padded(is_img[1:], 0, np.bool_),
        "target_kind": padded(kind[1:], KIND_NONE, np.int8),
        "region": padded(region[:-1], 0, np.int8),  # 1 prompt, 2 reasoning (dropout targets)
        "valid": padded([1] * n, 0, np.bool_),
        "positions": padded(list(range(n)), 0, np.int32),
    }


def pack_rows(rows: dict, seq_len: int, seed: int, pad_id: int, open_bins: int = 16) -> dict:
    """Pack padded rows (arrays [N, seq_len], see _pack) into fewer rows of seq_len: each
    sequence keeps its tokens, gets its own segment id and positions from 0, and attends only to
    itself (decode's segment_ids_bl), so the loss is the unpacked one without the padding work.
    Order: a seeded shuffle, then first fit among the `open_bins` most recent rows. Packed rows
    carry 'segment' [N', seq_len] (0: padding); unpacked rows have none (see
    sft_loss.forward_hidden)."""
    lengths = rows["valid"].sum(1).astype(int)
    order = np.random.default_rng(seed).permutation(len(lengths))
    bins, fill, open_ids = [], [], []
    for i in order:
        for b in open_ids:
            if fill[b] + lengths[i] <= seq_len:
                break
        else:
            b = len(bins)
            bins.append([])
            fill.append(0)
            open_ids = (open_ids + [b])[-open_bins:]
        bins[b].append(i)
        fill[b] += lengths[i]
    out = {k: np.zeros((len(bins), seq_len), v.dtype) for k, v in rows.items()}
    out["segment"] = np.zeros((len(bins), seq_len), np.int16)
    out["inputs"][:] = pad_id
    for r, members in enumerate(bins):
        at = 0
        for seg, i in enumerate(members, start=1):
            n = lengths[i]
            for k, v in rows.items():
                out[k][r, at:at + n] = v[i, :n]
            out["segment"][r, at:at + n] = seg
            at += n
    return out


def stack_rows(rows: list[dict]) -> dict:
    """Row dicts -> one dict of arrays with a leading row dimension."""
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

