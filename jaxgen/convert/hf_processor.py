"""The Hugging Face processor files of a Janus directory, carried through import and export.

`JanusProcessor.from_pretrained(dir)` needs `processor_config.json` (the image processor's
settings and `num_image_tokens`) and a tokenizer that names its image tokens
(`tokenizer.image_token`, `.boi_token`, `.eoi_token`, from `extra_special_tokens` in
tokenizer_config.json). An imported directory's processor files are kept verbatim in the jaxgen
checkpoint and written back on export; a model that never had them (a ShapesWorld model) gets
processor settings derived from its config: the understanding path reads pixels scaled to
[-1, 1], i.e. mean 0.5 and std 0.5 per channel.
"""

from __future__ import annotations

import json
import pathlib

from jaxgen.checkpoint import copy_processor_files
from jaxgen.checkpoint.files import read_json, write_json
from jaxgen.models.config import JanusConfig

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# tokenizer attribute -> Janus's special token
IMAGE_TOKENS = {"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>",
                "eoi_token": "<end_of_image>"}


def default_processor_config(config: JanusConfig) -> dict:
    """processor_config.json of a JanusProcessor for `config`'s understanding path."""
    size = int(config.vision.image_size)
    return {
        "processor_class": "JanusProcessor",
        "num_image_tokens": int(config.vision.num_image_tokens),
        "use_default_system_prompt": False,
        "image_processor": {
            "image_processor_type": "JanusImageProcessor", "processor_class": "JanusProcessor",
            "do_resize": True, "size": {"height": size, "width": size}, "min_size": 14,
            "resample": 3, "do_rescale": True, "rescale_factor": 1.0 / 255.0,
            "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "do_convert_rgb": True, "do_pad": True,
        },
    }


def name_image_tokens(tokenizer_dir) -> None:
    """Add Janus's image tokens to tokenizer_config.json's extra_special_tokens (those in the
    vocabulary), so `tokenizer.image_token` etc. exist after from_pretrained."""
    path = pathlib.Path(tokenizer_dir) / TOKENIZER_CONFIG_FILE
    if not path.is_file():
        return
    tok_config = read_json(path, "re-save the tokenizer with save_pretrained")
    vocab_file = pathlib.Path(tokenizer_dir) / "tokenizer.json"
    vocab_text = vocab_file.read_text() if vocab_file.is_file() else ""
    extra = dict(tok_config.get("extra_special_tokens") or {})
    for attr, token in IMAGE_TOKENS.items():
        if attr not in extra and json.dumps(token) in vocab_text:
            extra[attr] = token
    if extra:
        write_json(path, dict(tok_config, extra_special_tokens=extra))


def write_processor(out_dir, config: JanusConfig, processor_from=None) -> list[str]:
    """The processor files of an export: `processor_from`'s when it has them, else defaults
    derived from `config`. Returns the names written."""
    out_dir = pathlib.Path(out_dir)
    copied = copy_processor_files(processor_from, out_dir) if processor_from else []
    if "processor_config.json" not in copied:
        write_json(out_dir / "processor_config.json", default_processor_config(config))
        copied.append("processor_config.json")
    name_image_tokens(out_dir)
    return copied
