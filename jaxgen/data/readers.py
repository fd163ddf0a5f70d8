"""Readers for datasets users bring as local files, in their published formats.

Each returns a list of records in the ShapesWorld contract (so the same builders, pipelines and
trainers carry them) and raises UserError naming the file and what is wrong:
- `read_reasongen_sft(path, image_root, image_size)`: ReasonGen-R1 SFT jsonl, one object per
  line with a brief caption (the prompt), a detailed caption (the reasoning) and an image path
  -> SFT records (plan '' since these captions are the reasoning).
- `read_geneval_metadata(path)`: GenEval `evaluation_metadata.jsonl` (tag, include, exclude,
  prompt) -> RL prompt records.
- `read_t2i_compbench(path)`: T2I-CompBench prompt txt files (one prompt per line; the category
  is the file name without a `_val`/`_train` suffix), a file or a directory of them.
- `read_laion_sg(path)`: LAION-SG json (a list of {name, caption_ori, items: [{item_id, label,
  attributes}], relations: [{item1, relation, item2}]}) -> prompt records whose metadata holds
  the scene graph (objects keyed by `shape` = label, incomplete relations).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from jaxgen.errors import UserError

BRIEF_KEYS = ("brief_caption", "short_caption", "prompt", "caption")
DETAILED_KEYS = ("detailed_caption", "long_caption", "dense_caption", "reasoning")
IMAGE_KEYS = ("image", "image_path", "img_path", "file_name", "path")


def read_jsonl(path) -> list:
    """The JSON objects of a JSON-lines file (blank lines skipped); a bad line is a clear error."""
    p = pathlib.Path(path)
    if not p.exists():
        raise UserError(f"file {path} not found")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n} is not valid JSON ({e.msg}); expected one JSON object "
                            "per line") from None
    return out


def _first(d: dict, keys, where: str):
    for k in keys:
        if k in d and d[k] not in (None, ""):
            return d[k]
    raise UserError(f"{where} has none of the keys {list(keys)}")


def load_image(path, image_size=None) -> np.ndarray:
    """uint8[H, W, 3] of an image file, resized (bicubic) to image_size x image_size if given."""
    from PIL import Image

    p = pathlib.Path(path)
    if not p.exists():
        raise UserError(f"image {path} not found")
    img = Image.open(p).convert("RGB")
    if image_size is not None:
        img = img.resize((int(image_size), int(image_size)), Image.BICUBIC)
    return np.asarray(img, np.uint8)


def read_reasongen_sft(path, image_root=None, image_size=None) -> list:
    """SFT records from a ReasonGen-R1 style jsonl (brief caption, detailed caption, image)."""
    root = pathlib.Path(image_root) if image_root else pathlib.Path(path).parent
    records = []
    for n, d in enumerate(read_jsonl(path), start=1):
        where = f"{path}:{n}"
        prompt = _first(d, BRIEF_KEYS, where)
        caption = _first(d, DETAILED_KEYS, where)
        image_path = pathlib.Path(_first(d, IMAGE_KEYS, where))
        image = load_image(image_path if image_path.is_absolute() else root / image_path,
                           image_size)
        meta = {"tag": "reasongen_sft", "include": [], "exclude": [], "prompt": prompt}
        records.append({"prompt": prompt, "category": "reasongen_sft", "plan": "",
                        "caption": caption, "image": image, "metadata": json.dumps(meta)})
    return records


def read_geneval_metadata(path) -> list:
    """RL prompt records from GenEval's evaluation_metadata.jsonl."""
    records = []
    for n, d in enumerate(read_jsonl(path), start=1):
        for key in ("tag", "include", "prompt"):
            if key not in d:
                raise UserError(f"{path}:{n} has no {key!r}; GenEval metadata lines need tag, "
                                "include and prompt")
        d.setdefault("exclude", [])
        records.append({"prompt": d["prompt"], "category": d["tag"], "metadata": json.dumps(d)})
    return records


def _compbench_category(file: pathlib.Path) -> str:
    stem = file.stem
    for suffix in ("_val", "_train", "_test"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem


def read_t2i_compbench(path) -> list:
    """RL prompt records from T2I-CompBench txt files (a file, or a directory of *.txt)."""
    p = pathlib.Path(path)
    if not p.exists():
        raise UserError(f"T2I-CompBench path {path} not found")
    files = sorted(p.glob("*.txt")) if p.is_dir() else [p]
    if not files:
        raise UserError(f"no .txt prompt files in {path}")
    records = []
    for f in files:
        cat = _compbench_category(f)
        for line in f.read_text(encoding="utf-8").splitlines():
            prompt = line.strip()
            if prompt:
                meta = {"tag": cat, "include": [], "exclude": [], "prompt": prompt}
                records.append({"prompt": prompt, "category": cat, "metadata": json.dumps(meta)})
    return records


def laion_sg_graph(sample: dict) -> dict:
    """Scene graph (jaxgen format) of one LAION-SG sample."""
    items = sample.get("items", [])
    index = {it["item_id"]: k for k, it in enumerate(items)}
    objects = [{"shape": it["label"], "attributes": list(it.get("attributes", []))}
               for it in items]
    relations = []
    for r in sample.get("relations", []):
        if r["item1"] in index and r["item2"] in index:
            relations.append([index[r["item1"]], r["relation"], index[r["item2"]]])
    return {"objects": objects, "relations": relations, "complete": False}


def read_laion_sg(path) -> list:
    """Prompt records (caption + scene graph in metadata) from a LAION-SG json file."""
    p = pathlib.Path(path)
    if not p.exists():
        raise UserError(f"LAION-SG file {path} not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg}); expected a LAION-SG json list") from None
    if isinstance(data, dict):
        data = [data]
    records = []
    for k, s in enumerate(data):
        if "items" not in s:
            raise UserError(f"{path}: sample {k} has no 'items'; not a LAION-SG file")
        prompt = s.get("caption_ori", "")
        meta = {"tag": "laion_sg", "include": [], "exclude": [], "prompt": prompt,
                "name": s.get("name", ""), "scene_graph": laion_sg_graph(s)}
        records.append({"prompt": prompt, "category": "laion_sg", "metadata": json.dumps(meta)})
    return records
