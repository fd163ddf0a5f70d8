"""`jaxgen eval images --dir DIR`: score a folder of generated images with the pixel evaluator.

Accepted layouts:
  GenEval:  DIR/<index>/metadata.jsonl (one GenEval metadata line) + DIR/<index>/samples/*.png
  flat:     DIR/metadata.jsonl, one line per image: GenEval metadata plus "file" (image path
            relative to DIR); or pass --metadata FILE for a jsonl elsewhere.
Prints the per-category table (GenEval overall = mean over categories) and mean SG scores for
prompts whose metadata carries a scene graph; --out writes per-image results as jsonl.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from PIL import Image
from tqdm import tqdm

from jaxgen.data.readers import read_jsonl
from jaxgen.errors import UserError
from jaxgen.eval import geneval, scene_graph
from jaxgen.eval.report import category_table

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def collect(directory, metadata_file=None) -> list:
    """[(image path, metadata dict)] of a results folder in one of the accepted layouts."""
    root = pathlib.Path(directory)
    if not root.is_dir():
        raise UserError(f"--dir {directory} is not a directory")
    pairs = []
    flat = pathlib.Path(metadata_file) if metadata_file else root / "metadata.jsonl"
    if flat.exists():
        for n, meta in enumerate(read_jsonl(flat), start=1):
            if "file" not in meta:
                raise UserError(f"record {n} of {flat} has no 'file' key naming its image")
            pairs.append((root / meta["file"], meta))
        return pairs
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        mfile = sub / "metadata.jsonl"
        if not mfile.exists():
            continue
        records = read_jsonl(mfile)
        if not records:
            raise UserError(f"{mfile} is empty; GenEval's layout has one metadata line per folder")
        meta = records[0]
        samples = sub / "samples"
        for img in sorted(samples.iterdir() if samples.is_dir() else []):
            if img.suffix.lower() in IMAGE_SUFFIXES:
                pairs.append((img, meta))
    if not pairs:
        raise UserError(f"no images found in {directory}: expected DIR/metadata.jsonl with "
                        "'file' keys or GenEval's DIR/<index>/{metadata.jsonl,samples/*.png}")
    return pairs


def evaluate(pairs) -> list:
    """Per-image result dicts: category, prompt, correct, reason, score (+ SG scores)."""
    results = []
    for path, meta in tqdm(pairs, desc="eval images"):
        if not path.exists():
            raise UserError(f"image {path} listed in the metadata does not exist")
        image = np.asarray(Image.open(path).convert("RGB"))
        r = geneval.score(image, meta)
        r.update(category=meta.get("tag", "unknown"), prompt=meta.get("prompt", ""),
                 file=str(path))
        if meta.get("scene_graph"):
            r.update(scene_graph.score_image(image, meta["scene_graph"]))
        results.append(r)
    return results


def images_args(parser):
    parser.add_argument("--dir", required=True, help="folder of generated images")
    parser.add_argument("--metadata", default=None, help="jsonl of metadata with 'file' keys")
    parser.add_argument("--out", default=None, help="write per-image results here (jsonl)")


def images(args) -> int:
    results = evaluate(collect(args.dir, args.metadata))
    text, table = category_table(results)
    print(text)
    sg = [r for r in results if "sg_iou" in r]
    if sg:
        means = {k: sum(r[k] for r in sg) / len(sg) for k in ("sg_iou", "entity_iou",
                                                                "relation_iou")}
        print("scene graphs: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    return 0
