"""ShapesWorld data: tokenizer + SFT and RL prompt datasets (TFDS array_record).

Command:  jaxgen data build --config configs/data.py:shapes [--out_dir data/shapes]
Runtime:  about 30 s on a 2-core CPU for `shapes` (64 px); a few seconds for `tiny`.
Result:   OUT/tokenizer.json (~420 tokens), OUT/tfds/shapes_world_sft (train 4000 / test 550
          images with prompt, layout plan, detailed caption, GenEval metadata) and
          OUT/tfds/shapes_world_prompts (train 2200 / test 550 prompts; test = held-out
          compositions). Args: shapes (default, 64 px), shapes256 (256 px), tiny (tests).
"""

import ml_collections

from jaxgen.models.config import ConfigError


def get_config(arg="shapes"):
    c = ml_collections.ConfigDict()
    c.out_dir = "data/shapes"
    c.seed = 0
    c.image_size = 64
    c.num_sft_train = 4000
    c.num_sft_test = 550
    c.num_prompts_train = 2200
    c.num_prompts_test = 550
    c.vocab_size = 512
    c.categories = ()  # empty: all ShapesWorld categories
    if arg == "shapes":
        pass
    elif arg == "shapes256":
        c.out_dir = "data/shapes256"
        c.image_size = 256
    elif arg == "tiny":
        c.out_dir = "data/tiny"
        c.num_sft_train = 66
        c.num_sft_test = 22
        c.num_prompts_train = 44
        c.num_prompts_test = 22
    else:
        raise ConfigError(f"unknown data config {arg!r}; use shapes, shapes256 or tiny")
    return c
