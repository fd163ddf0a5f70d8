"""Build the ShapesWorld datasets and tokenizer: `build_all(config, out_dir)`.

Data directory layout:
    out_dir/tokenizer.json (+ tokenizer_config.json, special_tokens_map.json)
                                    AutoTokenizer.from_pretrained(out_dir) loads it
    out_dir/tfds/shapes_world_sft/1.0.0/...      SFT records, splits train / test
    out_dir/tfds/shapes_world_prompts/1.0.0/...  RL prompt records, splits train / test
    out_dir/build_info.json                      config, counts and timings of the build

`load_split(data_dir, name, split)` gives a grain.MapDataset of decoded records (str texts,
uint8 images) for the trainers; `name` is 'sft' / 'prompts' or a full dataset name.
Records follow the contract of `jaxgen.data` (prompt, category, plan, caption, image, metadata
json). The test splits hold the held-out compositions (see `jaxgen.data.prompts`).
"""

from __future__ import annotations

import json
import pathlib
import time

import grain
import numpy as np
from tqdm import tqdm

from jaxgen.data import prompts, reasoning, shapes_world, templates
from jaxgen.data import tfds_builders as tb
from jaxgen.data import tokenizer as tok_lib
from jaxgen.errors import UserError

DATASETS = {"sft": "shapes_world_sft", "prompts": "shapes_world_prompts"}


def _categories(config) -> tuple:
    cats = tuple(config.categories) if config.get("categories") else prompts.CATEGORIES
    unknown = [c for c in cats if c not in prompts.CATEGORIES]
    if unknown:
        raise UserError(f"unknown categories {unknown} in config.categories; "
                        f"known: {prompts.CATEGORIES}")
    return cats


def sft_records(n: int, split: str, rng: np.random.Generator, image_size: int, categories,
                desc: str = "") -> list:
    """n SFT records of `split`, categories cycled evenly."""
    out = []
    for i in tqdm(range(n), desc=desc or f"sft/{split}", leave=False, disable=n < 200):
        cat = categories[i % len(categories)]
        prompt, meta, scene = prompts.sample_prompt(rng, split, cat, canvas=image_size)
        out.append({"prompt": prompt, "category": cat,
                    "plan": reasoning.layout_plan(scene),
                    "caption": reasoning.detailed_caption(scene, meta),
                    "image": shapes_world.render(scene),
                    "metadata": json.dumps(meta)})
    return out


def prompt_records(n: int, split: str, rng: np.random.Generator, categories) -> list:
    out = []
    for i in range(n):
        meta = prompts.sample_metadata(rng, split, categories[i % len(categories)])
        out.append({"prompt": meta["prompt"], "category": meta["tag"],
                    "metadata": json.dumps(meta)})
    return out


def tokenizer_corpus(records) -> list:
    """Every text the model sees: prompts, plans, captions, templates around them."""
    texts = [templates.generation_prompt("", tok_lib.BOS), templates.BOI, templates.EOI]
    for r in records:
        texts.append(r["prompt"])
        for key in ("plan", "caption"):
            if r.get(key):
                texts.append(r[key])
    return texts


def build_all(config, out_dir) -> dict:
    """Build tokenizer + TFDS datasets under out_dir (layout in the module docstring)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rng = np.random.default_rng(config.seed)
    cats = _categories(config)
    size = int(config.image_size)
    bar = tqdm(total=5, desc="jaxgen data build")
    sft = {"train": sft_records(config.num_sft_train, "train", rng, size, cats),
           "test": sft_records(config.num_sft_test, "test", rng, size, cats)}
    bar.update(1)
    rl = {"train": prompt_records(config.num_prompts_train, "train", rng, cats),
          "test": prompt_records(config.num_prompts_test, "test", rng, cats)}
    bar.update(1)
    corpus = tokenizer_corpus(sft["train"] + sft["test"] + rl["train"] + rl["test"])
    tok_lib.build_tokenizer(corpus, out, vocab_size=config.vocab_size)
    bar.update(1)
    tfds_dir = out / "tfds"
    tb.write_dataset(DATASETS["sft"], tb.sft_features(size), sft, tfds_dir)
    bar.update(1)
    tb.write_dataset(DATASETS["prompts"], tb.PROMPT_FEATURES, rl, tfds_dir)
    bar.update(1)
    bar.close()
    info = {"config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
            "counts": {f"sft/{k}": len(v) for k, v in sft.items()}
            | {f"prompts/{k}": len(v) for k, v in rl.items()},
            "seconds": round(time.time() - t0, 2), "tokenizer": str(out / "tokenizer.json"),
            "tfds_dir": str(tfds_dir)}
    (out / "build_info.json").write_text(json.dumps(info, indent=2, default=str))
    return info


def load_split(data_dir, name: str, split: str):
    """grain.MapDataset of decoded records of dataset `name` ('sft', 'prompts' or a full name)."""
    full = DATASETS.get(name, name)
    return grain.MapDataset.source(tb.read_split(pathlib.Path(data_dir) / "tfds", full, split))
