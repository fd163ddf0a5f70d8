"""Supervised fine-tuning of the unified model: reasoning-then-image and image understanding.

Generation rows (one sequence, teacher forced):
    generation_prompt(prompt) | reasoning ('plan' | 'caption' | 'none') | <begin_of_image> |
    N image codes | <end_of_image>
  loss weights of the *targets*: reasoning text `text_weight` (ReasonGen-R1: 2.0), the
  <begin_of_image> token `boi_weight` (0.0), image codes `image_weight` (1.0), <end_of_image>
  `eoi_weight` (0.0), prompt 0. Prompt dropout (`prompt_dropout`, default 0.1) replaces the
  prompt (all but BOS) by <pad> so the model learns the unconditional branch of CFG; with
  `dropout_hides='prompt_and_reasoning'` the reasoning is hidden too. Dropped rows train only
  the image tokens.
Understanding rows (Janus-Pro-R1 self-evaluation):
    understanding_prompt(question) with the image (SigLIP embeddings, or its VQ codes inline when
    model.understanding_input is 'vq_codes') | answer <eos>
  loss on the answer tokens only (`answer_weight`).
The loss is sum(weight * NLL) / sum(weight) over the global batch (gradient accumulation
included). Batches hold a fixed number of rows of each task (`data.task_mix`).

Data is built once and cached in the workdir (`sft_cache.npz`): records -> token ids, images ->
VQ codes with the trained tokenizer (`vq_params`, from `jaxgen train vq`).
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import checkpoint as ckpt_lib
from jaxgen import parallel
from jaxgen.concurrent_batches import map_batches
from jaxgen.data import templates
from jaxgen.data.tokenizer import tokenize_prompts
from jaxgen.errors import UserError
from jaxgen.models import janus
from jaxgen.train import losses, loop as loop_lib, optim, state as state_lib

TASK_GENERATION, TASK_UNDERSTANDING = 0, 1
# Target kinds (for per-kind metrics); weights come from config.loss.
KIND_NONE, KIND_TEXT, KIND_BOI, KIND_IMAGE, KIND_EOI, KIND_ANSWER = 0, 1, 2, 3, 4, 5
KIND_NAMES = {KIND_TEXT: "text", KIND_BOI: "boi", KIND_IMAGE: "image", KIND_EOI: "eoi",
              KIND_ANSWER: "answer"}
REASONING_KINDS = ("plan", "caption", "none")
JUDGE_TASKS = ("yes_no", "describe", "crop")  # understanding rows: see jaxgen.data.judge
CACHE_FILE = "sft_cache.npz"
VISION_PRETRAIN_FILE = "vision_pretrain.msgpack"


# ------------------------------------------------------------------------- tokenizer


def load_tokenizer(path):
    """The ShapesWorld (or any HF fast) tokenizer saved in `path`."""
    from jaxgen.data.tokenizer import load_tokenizer as data_load
    path = str(path)
    if not path or not pathlib.Path(path).exists():
        raise UserError(f"tokenizer {path!r} not found; build the data first (`jaxgen data build "
                        "--out D`) and pass --config.data.data_dir=D (or "
                        "--config.data.tokenizer=<dir with tokenizer.json>)")
    return data_load(path)


def special_ids(tokenizer) -> dict:
    from jaxgen.data.tokenizer import special_token_ids
    return dict(special_token_ids(tokenizer))


def model_config_for(config, tokenizer=None):
    """JanusConfig from config.model, with vocab/special ids taken from the tokenizer and the
    execution options (scan, remat, compute dtype) from config.model_options."""
    import dataclasses
    mc = janus.config_from_configdict(config.model)
    opts = config.get("model_options", {})
    text_kw = {k: opts[k] for k in ("scan_layers", "remat_policy") if k in opts}
    if tokenizer is not None:
        ids = special_ids(tokenizer)
        vocab = max(mc.text.vocab_size, len(tokenizer))
        mc = mc.replace(**ids)
        text_kw["vocab_size"] = vocab
    if text_kw:
        mc = mc.replace(text=dataclasses.replace(mc.text, **text_kw))
    return mc


# --------------------------------------------------------------------------- records


def procedural_records(n: int, seed: int, split: str, image_size: int) -> list[dict]:
    """SFT records rendered on the fly from ShapesWorld (used when no built dataset is given);
    same fields and reasoning texts as `jaxgen.data.build.sft_records`."""
    from jaxgen.data import prompts
    from jaxgen.data.build import sft_records
    cats = prompts.CATEGORIES
    rng = np.random.default_rng(seed)
    return sft_records(n, split, rng, image_size, cats)


RECORD_SOURCES = ("shapes", "reasongen_jsonl")


def load_records(config, split: str, n: int, seed: int) -> list[dict]:
    """SFT records: with data.source='shapes' (default) the first n of the built dataset
    (config.data.data_dir, `jaxgen data build`) when set, else rendered procedurally; with
    'reasongen_jsonl' the first n lines of a ReasonGen-R1 style JSONL (data.path: brief caption,
    detailed caption, image path relative to data.image_root), images resized to data.canvas."""
    dc = config.data
    source = dc.get("source", "shapes")
    if source not in RECORD_SOURCES:
        raise UserError(f"unknown data.source {source!r}; choose one of {RECORD_SOURCES}")
    if source == "reasongen_jsonl":
        from jaxgen.data.readers import read_reasongen_sft
        if not dc.get("path"):
            raise UserError("data.source='reasongen_jsonl' needs --config.data.path=FILE.jsonl "
                            "(lines with a brief caption, a detailed caption and an image path)")
        records = read_reasongen_sft(dc.path, dc.get("image_root") or None,
                                     int(dc.get("canvas", 384)))
        return records[:n]
    if dc.get("data_dir"):
        from jaxgen.data.build import load_split
        ds = load_split(dc.data_dir, "sft", split)
        if len(ds) == 0:
            raise UserError(f"no '{split}' SFT records in {dc.data_dir}; rebuild the data")
        return [ds[i] for i in range(min(n, len(ds)))]
    # Scenes are drawn on a `canvas`-pixel canvas and resized to the model's image sizes.
    return procedural_records(n, seed, split, int(dc.get("canvas", 64)))


def judge_records(records: list[dict], seed: int, easy_negatives: float = 0.0) -> list[dict]:
    """(image, question, answer) rows for the understanding task (Janus-Pro-R1 self-evaluation:
    the image with its own prompt -> 'yes', with a perturbed prompt -> 'no')."""
    from jaxgen.data import judge
    return judge.judge_examples(records, np.random.default_rng(seed),
                                easy_negatives=easy_negatives)


def vq_roundtrip_images(vq_encode_decode_fn, images_uint8: np.ndarray, batch: int = 64):
    """uint8 images -> the same images encoded and decoded by the VQ tokenizer (uint8), i.e. how
    the policy's generated images look to a judge."""
    def roundtrip(images):
        y = np.asarray(vq_encode_decode_fn(jnp.asarray(images, jnp.float32) / 127.5 - 1.0),
                       np.float32)
        return np.clip(np.round((y + 1.0) * 127.5), 0, 255).astype(np.uint8)

    return map_batches(roundtrip, images_uint8, batch)


# ---------------------------------------------------------------------- tokenisation


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def generation_row(tokenizer, mc, prompt: str, reasoning: str, codes, seq_len: int,
                   lc) -> dict:
    """Arrays for one generation row (length seq_len); see the module docstring."""
    bos = tokenizer.bos_token
    prompt_ids = _encode(tokenizer, templates.generation_prompt(prompt, bos))
    reason_ids = _encode(tokenizer, reasoning) if reasoning else []
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
        head, tail = _encode(tokenizer, before), _encode(tokenizer, after)
        prompt_ids = head + [int(c) for c in codes] + tail
        is_img = [0] * len(head) + [1] * n_img + [0] * len(tail)
    else:
        prompt_ids = _encode(tokenizer, text)
        is_img = [0] * len(prompt_ids)
    ans_ids = _encode(tokenizer, answer) + [mc.eos_token_id]
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
    carry 'segment' [N', seq_len] (0: padding); unpacked rows have none (see forward_hidden)."""
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


def _stack(rows: list[dict]) -> dict:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _reasoning(record: dict, kind: str) -> str:
    if kind == "none":
        return ""
    if kind not in REASONING_KINDS:
        raise UserError(f"unknown reasoning kind {kind!r}; choose one of {list(REASONING_KINDS)} "
                        "(--config.data.reasoning=...)")
    return record[kind]


def images_to_codes(vq_encode_fn, images_uint8: np.ndarray, batch: int = 64,
                    threads: int | None = None) -> np.ndarray:
    """uint8 [N, H, W, 3] -> int32 codes [N, n] with a jitted encoder, `threads` batches at a
    time (`jaxgen.concurrent_batches`: one per core on a CPU)."""
    def encode(images):
        return np.asarray(vq_encode_fn(jnp.asarray(images, jnp.float32) / 127.5 - 1.0))

    return map_batches(encode, images_uint8, batch, threads).astype(np.int32)


def resize_images(images_uint8: np.ndarray, size: int) -> np.ndarray:
    if images_uint8.shape[1] == size:
        return images_uint8
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC))
                     for im in images_uint8])


def build_dataset(config, tokenizer, mc, vq_params) -> dict:
    """{'generation': arrays, 'understanding': arrays or None} (see generation_row)."""
    dc, lc = config.data, config.loss
    task = dc.get("judge_task", "yes_no")
    if task not in JUDGE_TASKS:
        raise UserError(f"unknown data.judge_task {task!r}; use one of {JUDGE_TASKS}")
    # "Malformed drawing." rows: whole scenes for 'describe', zoomed objects for 'crop'
    for key, tasks in (("degraded_fraction", ("describe",)),
                       ("corrupted_fraction", ("describe", "crop"))):
        if float(dc.get(key, 0.0)) > 0 and task not in tasks:
            raise UserError(f"data.{key} needs data.judge_task in {tasks} (got {task!r}); set it "
                            "to 0 or switch task")
    if dc.get("source", "shapes") != "shapes" and float(dc.task_mix.understanding) > 0:
        raise UserError("the understanding (judge) tasks are built from ShapesWorld scenes; with "
                        f"data.source={dc.source!r} set --config.data.task_mix.understanding=0")
    records = load_records(config, "train", int(dc.num_examples), int(dc.seed))
    vq_model = {"vqmodel": jax.tree.map(jnp.asarray, vq_params)}
    gen = None
    if float(dc.task_mix.generation) > 0:
        images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
        encode = jax.jit(lambda x: janus.vq_encode(vq_model, mc, x))
        codes = images_to_codes(encode, resize_images(images, mc.vq.image_size))
        gen = _stack([generation_row(tokenizer, mc, r["prompt"], _reasoning(r, dc.reasoning), c,
                                     int(dc.seq_len), lc) for r, c in zip(records, codes)])
        if dc.get("packing", False):
            gen = pack_rows(gen, int(dc.seq_len), int(dc.seed), mc.pad_token_id)
    und = None
    kind = dc.get("understanding_images", "rendered")
    if kind not in ("rendered", "vq"):
        raise UserError(f"unknown data.understanding_images {kind!r}; use 'rendered' or 'vq'")

    def vq_roundtrip(pixels):  # judge images as the policy draws them: through the VQ tokenizer
        fn = jax.jit(lambda x: janus.vq_decode(vq_model, mc, janus.vq_encode(vq_model, mc, x)))
        return vq_roundtrip_images(fn, resize_images(pixels, mc.vq.image_size))

    if float(dc.task_mix.understanding) > 0:
        if task == "yes_no":
            rows = judge_records(records, int(dc.seed) + 1, float(dc.get("easy_negatives", 0.0)))
        elif task == "crop":  # objects zoomed; the round trip applies to the scenes before cropping
            from jaxgen.data.judge import crop_examples
            rows = crop_examples(records, np.random.default_rng(int(dc.seed) + 1),
                                 int(np.asarray(records[0]["image"]).shape[0]),
                                 float(dc.get("corrupted_fraction", 0.0)),
                                 float(dc.get("empty_fraction", 0.0)),
                                 prepare=vq_roundtrip if kind == "vq" else None,
                                 kinds=tuple(dc.get("corruption_kinds", ())) or None,
                                 blur=tuple(dc.get("crop_blur", (0.0, 0.0))))
        else:  # 'describe'
            from jaxgen.data.judge import describe_examples
            rows = describe_examples(records, np.random.default_rng(int(dc.seed) + 1),
                                     float(dc.get("blank_fraction", 0.0)))
        if float(dc.get("degraded_fraction", 0.0)) > 0:  # describe only (checked above)
            from jaxgen.train.self_eval import degraded_examples
            rows += degraded_examples(config, records, tokenizer, mc, vq_params,
                                      float(dc.degraded_fraction))
        if float(dc.get("corrupted_fraction", 0.0)) > 0 and task == "describe":
            from jaxgen.data.judge import corrupted_examples
            rows += corrupted_examples(records, np.random.default_rng(int(dc.seed) + 3),
                                       float(dc.corrupted_fraction))
        if float(dc.get("caption_fraction", 0.0)) > 0:
            from jaxgen.data.judge import caption_examples
            rows += caption_examples(records, np.random.default_rng(int(dc.seed) + 2),
                                     float(dc.caption_fraction))
        pixels = np.stack([np.asarray(r["image"], np.uint8) for r in rows])
        if kind == "vq" and task != "crop":
            pixels = vq_roundtrip(pixels)
        codes = [None] * len(rows)
        if mc.understanding_input == "vq_codes":  # the image inline as its VQ codes
            encode = jax.jit(lambda x: janus.vq_encode(vq_model, mc, x))
            codes = images_to_codes(encode, resize_images(pixels, mc.vq.image_size))
        und = _stack([understanding_row(tokenizer, mc, r["question"], r["answer"],
                                        int(dc.seq_len), c) for r, c in zip(rows, codes)])
        if mc.understanding_input == "siglip":
            und["pixels"] = resize_images(pixels, mc.vision.image_size)
    return {"generation": gen, "understanding": und}


def _cache_key(config, vq_path) -> str:
    parts = {"data": config.data.to_dict(), "model": config.model.to_dict(),
             "init": config.get("init_checkpoint", ""),
             "vq": str(vq_path), "vq_mtime": pathlib.Path(vq_path).stat().st_mtime
             if vq_path and pathlib.Path(vq_path).exists() else 0}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_dataset(config, workdir, tokenizer, mc, vq_params, vq_path) -> dict:
    path = pathlib.Path(workdir) / CACHE_FILE
    key = _cache_key(config, vq_path)
    if path.exists():
        z = np.load(path, allow_pickle=False)
        if str(z["key"]) == key:
            out = {"generation": {k[4:]: z[k] for k in z.files if k.startswith("gen/")} or None,
                   "understanding": {k[4:]: z[k] for k in z.files if k.startswith("und/")} or None}
            return out
    data = build_dataset(config, tokenizer, mc, vq_params)
    if jax.process_index() == 0:
        flat = {f"gen/{k}": v for k, v in (data["generation"] or {}).items()}
        if data["understanding"] is not None:
            flat.update({f"und/{k}": v for k, v in data["understanding"].items()})
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, key=np.asarray(key), **flat)
        tmp.replace(path)
    return data


class _RowSource:
    """Random-access view of equal-length arrays: source[i] -> {key: array[i]} (for Grain)."""

    def __init__(self, arrays: dict):
        self.arrays = arrays
        self.n = len(next(iter(arrays.values())))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.arrays.items()}


class MixedBatcher:
    """Fixed rows per task per batch, each task from its own Grain loader
    (`jaxgen.data.pipeline.make_loader`: seeded shuffles, checkpointable).

    Every host draws the same global batch (the rows are in memory on every host) and keeps
    its own slice of it, so the batches, and hence a run, are the same on any number of hosts."""

    def __init__(self, data: dict, batch_size: int, mix, seed: int, image_size: int):
        from jaxgen.data.pipeline import make_loader
        from jaxgen.train.batching import _process_slice
        und_rows = 0
        if data.get("understanding") is not None:
            total = float(mix.generation) + float(mix.understanding)
            und_rows = int(round(batch_size * float(mix.understanding) / total))
        gen_rows = batch_size - und_rows
        self.rows = _process_slice(batch_size, None, None)

        def loader(arrays, rows, s):
            return iter(make_loader(_RowSource(arrays), batch_size=rows, seed=s, shard_index=0,
                                    shard_count=1))

        self.gen = loader(data["generation"], gen_rows, seed) if gen_rows else None
        self.und = loader(data["understanding"], und_rows, seed + 1) if und_rows else None
        self.image_size = image_size
        # SigLIP understanding rows carry pixels; generation rows then get blank ones
        und = data.get("understanding")
        self.und_pixels = und is not None and "pixels" in und

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        parts = []
        if self.gen is not None:
            g = dict(next(self.gen))
            g["task"] = np.full((len(g["inputs"]),), TASK_GENERATION, np.int8)
            if self.und is not None and self.und_pixels:
                g["pixels"] = np.zeros((len(g["inputs"]), self.image_size, self.image_size, 3),
                                       np.uint8)
            parts.append(g)
        if self.und is not None:
            u = dict(next(self.und))
            u["task"] = np.full((len(u["inputs"]),), TASK_UNDERSTANDING, np.int8)
            parts.append(u)
        if any("segment" in p for p in parts):  # packed generation rows beside unpacked ones
            for p in parts:
                p.setdefault("segment", p["valid"].astype(np.int16))
        return {k: np.concatenate([p[k] for p in parts])[self.rows] for k in parts[0]}

    def get_state(self) -> dict:
        return {"gen": self.gen.get_state() if self.gen else None,
                "und": self.und.get_state() if self.und else None}

    def set_state(self, state: dict):
        if self.gen is not None and state.get("gen") is not None:
            self.gen.set_state(state["gen"])
        if self.und is not None and state.get("und") is not None:
            self.und.set_state(state["und"])


# ------------------------------------------------------------------------------ loss


def forward_hidden(params, mc, batch):
    """Teacher-forced final hidden states [B, L, D]. Rows are right-padded single sequences (as
    _pack builds them; plain causal attention, janus.decode's causal_only) or, when the batch
    has 'segment', packed rows (pack_rows)."""
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
    build_dataset; None entries skipped), rounded up to `round_to`, at most the row length.

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
    """The SFT loss (see the module docstring). capacities ({'text', 'image'}, head_capacities):
    evaluate each head only at that many gathered target positions per row; None: both heads at
    every position (the same loss, more work)."""
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


# ------------------------------------------------------------------------ evaluation


def heldout_metadata(num_prompts: int, seed: int, split: str, canvas: int) -> list[dict]:
    """ShapesWorld prompt metadata of `split`, deterministic in `seed` (scenes that cannot be
    placed on the canvas are skipped)."""
    from jaxgen.data import shapes_world
    rng = np.random.default_rng(seed)
    metas = []
    while len(metas) < num_prompts:
        try:
            metas.append(shapes_world.sample_prompt(rng, split, canvas=canvas)[1])
        except UserError:
            continue
    return metas


def generation_accuracy(params, mc, tokenizer, num_prompts: int, seed: int, options,
                        batch_size: int = 16, reasoning: str = "none") -> dict:
    """GenEval-style accuracy (pixel-only evaluator) of images sampled for held-out prompts.

    Returns {'accuracy', 'score', 'images' uint8 [n, H, W, 3]}.
    """
    from jaxgen.eval import geneval
    from jaxgen.sampling.sampler import sample


    metas = heldout_metadata(num_prompts, seed, "test", mc.vq.image_size)
    correct, scores, images = [], [], []
    key = jax.random.PRNGKey(seed)
    for i in range(0, num_prompts, batch_size):
        chunk = metas[i:i + batch_size]
        ids, mask = tokenize_prompts(tokenizer, mc, [m["prompt"] for m in chunk], bucket=1)
        key, sub = jax.random.split(key)
        rollout = sample(params, mc, jnp.asarray(ids), jnp.asarray(mask), sub, options)
        pixels = np.asarray(janus.vq_decode(params, mc, rollout.image_ids_bn))
        imgs = np.clip(np.round((pixels + 1.0) * 127.5), 0, 255).astype(np.uint8)
        for img, m in zip(imgs, chunk):
            s = geneval.score(img, m)
            correct.append(bool(s["correct"]))
            scores.append(float(s.get("score", float(s["correct"]))))
            images.append(img)
    return {"accuracy": float(np.mean(correct)), "score": float(np.mean(scores)),
            "images": np.stack(images)}


def sample_options(config):
    from jaxgen.sampling.sampler import SampleOptions
    ec = config.eval
    return SampleOptions(max_think_tokens=int(ec.max_think_tokens),
                         cfg_weight=float(ec.cfg_weight), greedy=bool(ec.greedy),
                         image_temperature=float(ec.image_temperature),
                         temperature=float(ec.temperature),
                         uncond_hides=str(config.data.dropout_hides))


# ----------------------------------------------------------------------------- train


GENERATION_EMBEDDING_INITS = ("random", "codebook")


def init_model_params(mc, rng, vq_params=None, generation_embeddings: str = "random"):
    """Random init with the trained VQ tokenizer's weights. generation_embeddings='codebook'
    starts the image-input embeddings at the VQ codebook (janus.codebook_embeddings), so codes
    that decode to similar patches are similar inputs from step 0."""
    if generation_embeddings not in GENERATION_EMBEDDING_INITS:
        raise UserError(f"unknown init_generation_embeddings {generation_embeddings!r}; use one "
                        f"of {GENERATION_EMBEDDING_INITS}")
    params = janus.init_params(mc, rng)
    if vq_params is not None:
        params = dict(params)
        params["vqmodel"] = jax.tree.map(jnp.asarray, vq_params)
        if generation_embeddings == "codebook":
            params["generation_embeddings"] = {"embedding": janus.codebook_embeddings(params)}
    elif generation_embeddings == "codebook":
        raise UserError("init_generation_embeddings='codebook' needs the trained VQ tokenizer; "
                        "set --config.data.vq_params")
    return params


def _checkpoint_init_fn(path, mc, vq_params, fresh_parts=(), fresh_init_fn=None):
    """Start from a jaxgen checkpoint (e.g. the judge from the SFT'd policy, as Janus-Pro-R1's
    self-evaluation does) instead of a random init; its shapes must equal this config's except in
    `fresh_parts` (top-level parameter groups, e.g. 'vision_model', taken from fresh_init_fn)."""
    params, ckpt_mc, _ = ckpt_lib.load_checkpoint(path)
    # the checkpoint's layers stacked (or not) as this run scans them
    params, ckpt_mc = janus.with_execution_options(params, ckpt_mc,
                                                   scan_layers=mc.text.scan_layers)
    want = jax.eval_shape(lambda r: janus.init_params(mc, r), jax.random.PRNGKey(0))
    unknown = sorted(set(fresh_parts) - set(want))
    if unknown:
        raise UserError(f"init_fresh_parts names {unknown}, which this model does not have; "
                        f"choose from {sorted(want)}")

    def shapes(tree):
        return jax.tree.map(lambda x: x.shape, {k: v for k, v in tree.items()
                                                if k not in fresh_parts})
    if shapes(want) != shapes(params):
        raise UserError(f"init_checkpoint {path} has other parameter shapes than this config "
                        f"(checkpoint model: {ckpt_mc}); use a checkpoint of the same model config,"
                        " or list the differing parts in --config.init_fresh_parts")
    params = dict(params)
    params["vqmodel"] = vq_params

    def init(rng):
        out = dict(params)
        if fresh_parts:
            fresh = fresh_init_fn(rng)
            out.update({k: fresh[k] for k in fresh_parts})
        return jax.tree.map(jnp.asarray, out)
    return init


def _with_pretrained_tower(init_fn, config, mc, workdir):
    """init_fn with the vision tower replaced by one pretrained on patch labels of the training
    records (jaxgen/train/vision_pretrain.py), computed once per workdir and kept in
    <workdir>/vision_pretrain.msgpack so a resumed run does not train it again."""
    import flax.serialization
    from jaxgen.train import vision_pretrain as vp
    path = pathlib.Path(workdir) / VISION_PRETRAIN_FILE
    template = jax.eval_shape(init_fn, jax.random.PRNGKey(0))["vision_model"]
    if path.exists():
        tower = flax.serialization.from_bytes(template, path.read_bytes())
    else:
        dc, pc = config.data, config.vision_pretrain
        records = load_records(config, "train", int(dc.num_examples), int(dc.seed))
        settings = vp.PretrainSettings(steps=int(pc.steps), batch_size=int(pc.batch_size),
                                       learning_rate=float(pc.learning_rate),
                                       seed=int(config.seed))
        tower, metrics = vp.pretrain_tower(mc, records, settings,
                                           init_fn(jax.random.PRNGKey(int(config.seed)))
                                           ["vision_model"])
        print(f"vision pretrain: {metrics}")
        if jax.process_index() == 0:
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(flax.serialization.to_bytes(jax.device_get(tower)))
            tmp.replace(path)  # atomic: a crash leaves no half-written tower

    def init(rng):
        return {**init_fn(rng), "vision_model": jax.tree.map(jnp.asarray, tower)}
    return init


def train(config, workdir) -> dict:
    """Train (or resume) SFT in `workdir`. Returns {'metrics', 'checkpoint' (jaxgen checkpoint
    dir for sampling), 'step', 'status', 'accuracy' (when config.eval.num_prompts > 0)}."""
    from jaxgen.train import vq as vq_lib
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dc = config.data
    # a real model's tokenizer and VQ come with its checkpoint (`jaxgen convert hf-to-jax`)
    init_ckpt = config.get("init_checkpoint", "")
    tokenizer = load_tokenizer(dc.tokenizer or dc.data_dir or init_ckpt)
    mc = model_config_for(config, tokenizer)
    vq_path = dc.get("vq_params", "")
    if vq_path:
        vq_params = vq_lib.load_params(vq_path)
    elif init_ckpt:
        vq_params = ckpt_lib.load_checkpoint(init_ckpt)[0]["vqmodel"]
        vq_path = str(pathlib.Path(init_ckpt) / ckpt_lib.PARAMS_FILE)  # (the cache key)
    else:
        raise UserError("config.data.vq_params is empty; train the tokenizer first "
                        "(`jaxgen train vq --workdir V`) and pass "
                        f"--config.data.vq_params=V/{vq_lib.VQ_PARAMS_FILE}, or start from a "
                        "model that has one (--config.init_checkpoint=DIR)")
    data = cached_dataset(config, workdir, tokenizer, mc, vq_params, vq_path)

    mesh, layout = parallel.mesh_from_config(config.mesh)
    parallel.check_batch_divides(int(config.batch_size), mesh)
    opt = optim.make_optimizer(config)
    init_fn = lambda r: init_model_params(  # noqa: E731
        mc, r, vq_params, str(config.get("init_generation_embeddings", "random")))
    if config.get("init_checkpoint"):
        init_fn = _checkpoint_init_fn(config.init_checkpoint, mc, vq_params,
                                      tuple(config.get("init_fresh_parts", ())), init_fn)
    if int(config.get("vision_pretrain", {}).get("steps", 0)) > 0:
        init_fn = _with_pretrained_tower(init_fn, config, mc, workdir)
    state, shardings = state_lib.init_state(
        init_fn, opt, jax.random.PRNGKey(int(config.seed)), mesh, layout,
        janus.param_logical_axes(mc))
    capacities = head_capacities([data["generation"], data["understanding"]])
    step_fn = state_lib.make_train_step(
        make_loss_fn(mc, config, capacities), opt, shardings, mesh,
        accum_steps=int(config.grad_accum_steps), compute_dtype_name=config.compute_dtype,
        learning_rate_fn=optim.make_schedule(config.optim, int(config.total_steps)),
        layout=layout)
    batcher = MixedBatcher(data, int(config.batch_size), dc.task_mix, int(dc.seed),
                           mc.vision.image_size)
    tokens_per_batch = int(config.batch_size) * int(dc.seq_len)

    def eval_fn(st, step):
        ec = config.eval
        if int(ec.num_prompts) <= 0:
            return {}
        from jaxgen.train.metrics import save_image_grid
        res = generation_accuracy(parallel.to_host(st.params), mc, tokenizer,
                                  int(ec.num_prompts), int(ec.seed), sample_options(config),
                                  int(ec.batch_size))
        save_image_grid(workdir / "samples" / f"sft_step{step:06d}.png",
                        res["images"][:int(config.sample_grid)])
        return {"accuracy": res["accuracy"], "score": res["score"]}

    loop_cfg = loop_lib.LoopConfig.from_config(config, tokens_per_batch=tokens_per_batch,
                                               desc="sft")
    result = loop_lib.run(workdir=workdir, state=state, shardings=shardings, train_step=step_fn,
                          data=batcher, mesh=mesh, loop=loop_cfg, config=config,
                          eval_fn=eval_fn)
    out = {"metrics": result["metrics"], "step": result["step"], "status": result["status"]}
    if result["status"] == "done":
        out["checkpoint"] = str(export_checkpoint(workdir / "final", result["state"].params, mc,
                                                  tokenizer))
    if "eval_accuracy" in result["metrics"]:
        out["accuracy"] = result["metrics"]["eval_accuracy"]
    return out


def export_checkpoint(path, params, mc, tokenizer):
    """A jaxgen checkpoint dir (config.json + params.safetensors + tokenizer) for sampling.

    Every process calls it (the sharded params are gathered); process 0 writes."""
    ckpt_lib.export_from_mesh(lambda p: ckpt_lib.save_checkpoint(path, p, mc, tokenizer),
                              params, "sft-export")
    return pathlib.Path(path)
