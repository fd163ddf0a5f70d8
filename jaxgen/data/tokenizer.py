"""A small byte-level BPE tokenizer for ShapesWorld, built locally with `tokenizers`.

Byte-level BPE (every string encodes; decode(encode(s)) == s exactly, spaces and newlines
included), digits split one per token so box coordinates stay compositional, and a vocabulary of
a few hundred tokens (`vocab_size`, default 512: 256 bytes + merges + special tokens) so the tiny
model's embedding stays small. The special tokens the unified model needs are added as
non-normalised special tokens (SPECIAL_TOKENS); templates in `jaxgen.data.templates`.

`build_tokenizer(corpus, out_dir, vocab_size)` writes `tokenizer.json` (+ tokenizer_config.json,
special_tokens_map.json) loadable by `transformers.AutoTokenizer.from_pretrained(out_dir)` and
`PreTrainedTokenizerFast(tokenizer_file=...)`; `load_tokenizer(path)` loads a directory or a
tokenizer.json; `special_token_ids(tok)` returns the ids under JanusConfig field names.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from jaxgen.data import templates
from jaxgen.errors import PromptTooLongError, UserError

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
SPECIAL_TOKENS = (BOS, EOS, PAD, "<begin_of_image>", "<end_of_image>", "<image_placeholder>",
                  "<|User|>", "<|Assistant|>", "<obj>", "</obj>", "<box>", "</box>")
DEFAULT_VOCAB_SIZE = 512


def _wrap(tok_object):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok_object, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=list(SPECIAL_TOKENS[3:]),
        clean_up_tokenization_spaces=False, padding_side="left", model_max_length=4096)


def build_tokenizer(corpus, out_dir=None, vocab_size: int = DEFAULT_VOCAB_SIZE):
    """Train byte-level BPE on an iterable of strings; save to out_dir when given.

    Returns a `transformers.PreTrainedTokenizerFast`.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = _wrap(tok)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        fast.save_pretrained(str(out_dir))
    return fast


def load_tokenizer(path):
    """PreTrainedTokenizerFast from a directory holding tokenizer.json or the file itself."""
    p = pathlib.Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.exists():
        raise UserError(f"no tokenizer at {path}: expected a tokenizer.json (build one with "
                        "`jaxgen data build --config configs/data.py:shapes`)")
    if p.is_dir():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(p))
    return _wrap(Tokenizer.from_file(str(file)))


def special_token_ids(tokenizer) -> dict:
    """Ids of the special tokens, keyed by JanusConfig field names."""
    names = {"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD,
             "boi_token_id": "<begin_of_image>", "eoi_token_id": "<end_of_image>",
             "image_token_id": "<image_placeholder>"}
    out = {}
    for field, text in names.items():
        tid = tokenizer.convert_tokens_to_ids(text)
        if tid is None or tid == tokenizer.unk_token_id:
            raise UserError(f"tokenizer has no {text!r} token; rebuild it with jaxgen data build")
        out[field] = int(tid)
    return out


def round_trips(tokenizer, text: str) -> bool:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.decode(ids, skip_special_tokens=False) == text


def tokenize_prompts(tokenizer, config, texts, length: int | None = None, bucket: int = 16):
    """Left-padded generation prompts (ids int32[B, length], mask bool[B, length]); length None:
    the longest prompt rounded up to a multiple of `bucket` (nearby lengths share a compile)."""
    bos = tokenizer.bos_token or "<bos>"
    encoded = [tokenizer.encode(templates.generation_prompt(t, bos), add_special_tokens=False)
               for t in texts]
    if length is None:
        length = -(-max(len(e) for e in encoded) // bucket) * bucket
    ids = np.full((len(texts), length), config.pad_token_id, np.int32)
    mask = np.zeros((len(texts), length), bool)
    for i, (t, enc) in enumerate(zip(texts, encoded)):
        if len(enc) > length:
            raise PromptTooLongError(f"prompt {t[:60]!r} has {len(enc)} tokens > "
                                     f"data.max_prompt_tokens={length}; raise it")
        ids[i, length - len(enc):] = enc
        mask[i, length - len(enc):] = True
    return ids, mask


def detokenize_reasoning(tokenizer, think_ids_bt, think_mask_bt) -> list[str]:
    """The reasoning text of each row: its think tokens where the mask is set ('' if none)."""
    out = []
    for ids, m in zip(np.asarray(think_ids_bt), np.asarray(think_mask_bt)):
        out.append(tokenizer.decode([int(t) for t, k in zip(ids, m) if k],
                                    skip_special_tokens=False) if m.any() else "")
    return out
