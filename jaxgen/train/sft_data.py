"""The SFT data: records, their rows for both tasks, the workdir cache and the batcher.

Records ({'image', 'prompt', 'plan', 'caption', 'metadata', ...}) come from the built ShapesWorld
dataset, a ReasonGen-R1 style JSONL, or are rendered on the fly. Generation rows tokenise each
record with its image as VQ codes (`jaxgen.train.sft_rows`); understanding rows are the judge
tasks of `jaxgen.data.judge` (plus the policy-degraded images of `jaxgen.train.self_eval`).
The arrays are built once and cached in the workdir (`sft_cache.npz`), keyed by the data and
model config and the VQ tokenizer (`vq_params`, from `jaxgen train vq`). `MixedBatcher` draws a
fixed number of rows of each task per batch (`data.task_mix`).
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.data import judge, prompts
from jaxgen.data.build import load_split, sft_records
from jaxgen.data.images import images_to_codes, resize_images, vq_roundtrip_images
from jaxgen.data.pipeline import make_loader
from jaxgen.data.readers import read_reasongen_sft
from jaxgen.errors import UserError
from jaxgen.eval import geneval
from jaxgen.models import janus
from jaxgen.train.batching import process_slice
from jaxgen.train.self_eval import degraded_examples
from jaxgen.train.sft_rows import (TASK_GENERATION, TASK_UNDERSTANDING, generation_row,
                                   pack_rows, reasoning_text, stack_rows, understanding_row)

JUDGE_TASKS = ("yes_no", "describe", "crop")  # understanding rows: see jaxgen.data.judge
CACHE_FILE = "sft_cache.npz"
RECORD_SOURCES = ("shapes", "reasongen_jsonl")


def procedural_records(n: int, seed: int, split: str, image_size: int) -> list[dict]:
    """SFT records rendered on the fly from ShapesWorld (used when no built dataset is given);
    same fields and reasoning texts as `jaxgen.data.build.sft_records`."""
    cats = prompts.CATEGORIES
    rng = np.random.default_rng(seed)
    return sft_records(n, split, rng, image_size, cats)


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
        if not dc.get("path"):
            raise UserError("data.source='reasongen_jsonl' needs --config.data.path=FILE.jsonl "
                            "(lines with a brief caption, a detailed caption and an image path)")
        records = read_reasongen_sft(dc.path, dc.get("image_root") or None,
                                     int(dc.get("canvas", 384)))
        return records[:n]
    if dc.get("data_dir"):
        ds = load_split(dc.data_dir, "sft", split)
        if len(ds) == 0:
            raise UserError(f"no '{split}' SFT records in {dc.data_dir}; rebuild the data")
        return [ds[i] for i in range(min(n, len(ds)))]
    # Scenes are drawn on a `canvas`-pixel canvas and resized to the model's image sizes.
    return procedural_records(n, seed, split, int(dc.get("canvas", 64)))


def judge_records(records: list[dict], seed: int, easy_negatives: float = 0.0) -> list[dict]:
    """(image, question, answer) rows for the understanding task (Janus-Pro-R1 self-evaluation:
    the image with its own prompt -> 'yes', with a perturbed prompt -> 'no'; a negative the
    image satisfies by the pixel evaluator is skipped)."""
    return judge.judge_examples(records, np.random.default_rng(seed), geneval.satisfies,
                                easy_negatives=easy_negatives)


def heldout_metadata(num_prompts: int, seed: int, split: str, canvas: int) -> list[dict]:
    """ShapesWorld prompt metadata of `split`, deterministic in `seed` (scenes that cannot be
    placed on the canvas are skipped)."""
    rng = np.random.default_rng(seed)
    metas = []
    while len(metas) < num_prompts:
        try:
            metas.append(prompts.sample_prompt(rng, split, canvas=canvas)[1])
        except UserError:
            continue
    return metas


def build_dataset(config, tokenizer, mc, vq_params) -> dict:
    """{'generation': arrays or None, 'understanding': arrays or None} (sft_rows)."""
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
        gen = stack_rows([generation_row(tokenizer, mc, r["prompt"],
                                         reasoning_text(r, dc.reasoning), c, int(dc.seq_len), lc)
                          for r, c in zip(records, codes)])
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
            rows = judge.crop_examples(records, np.random.default_rng(int(dc.seed) + 1),
                                       int(np.asarray(records[0]["image"]).shape[0]),
                                       float(dc.get("corrupted_fraction", 0.0)),
                                       float(dc.get("empty_fraction", 0.0)),
                                       prepare=vq_roundtrip if kind == "vq" else None,
                                       kinds=tuple(dc.get("corruption_kinds", ())) or None,
                                       blur=tuple(dc.get("crop_blur", (0.0, 0.0))))
        else:  # 'describe'
            rows = judge.describe_examples(records, np.random.default_rng(int(dc.seed) + 1),
                                           float(dc.get("blank_fraction", 0.0)))
        if float(dc.get("degraded_fraction", 0.0)) > 0:  # describe only (checked above)
            rows += degraded_examples(config, records, tokenizer, mc, vq_params,
                                      float(dc.degraded_fraction))
        if float(dc.get("corrupted_fraction", 0.0)) > 0 and task == "describe":
            rows += judge.corrupted_examples(records, np.random.default_rng(int(dc.seed) + 3),
                                             float(dc.corrupted_fraction))
        if float(dc.get("caption_fraction", 0.0)) > 0:
            rows += judge.caption_examples(records, np.random.default_rng(int(dc.seed) + 2),
                                           float(dc.caption_fraction))
        pixels = np.stack([np.asarray(r["image"], np.uint8) for r in rows])
        if kind == "vq" and task != "crop":
            pixels = vq_roundtrip(pixels)
        codes = [None] * len(rows)
        if mc.understanding_input == "vq_codes":  # the image inline as its VQ codes
            encode = jax.jit(lambda x: janus.vq_encode(vq_model, mc, x))
            codes = images_to_codes(encode, resize_images(pixels, mc.vq.image_size))
        und = stack_rows([understanding_row(tokenizer, mc, r["question"], r["answer"],
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
    """build_dataset's arrays, from <workdir>/sft_cache.npz when its key (data and model
    config, init checkpoint, VQ params path and mtime) matches, else built and written there."""
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


class RowSource:
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
        und_rows = 0
        if data.get("understanding") is not None:
            total = float(mix.generation) + float(mix.understanding)
            und_rows = int(round(batch_size * float(mix.understanding) / total))
        gen_rows = batch_size - und_rows
        self.rows = process_slice(batch_size, None, None)

        def loader(arrays, rows, s):
            return iter(make_loader(RowSource(arrays), batch_size=rows, seed=s, shard_index=0,
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

