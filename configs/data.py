"""ShapesWorld data: the tokenizer and the SFT and RL prompt datasets (TFDS array_record).

Command:  jaxgen data build --config configs/data.py:shapes --out data/shapes
Runtime:  14 s on a 2-core CPU (float32 matmul 297.5 GFLOP/s), 2026-12-02 (the demo's data
          stage); 40 s on a 2-core CPU at 148 GFLOP/s, 2026-12-03.
Result:   in the --out folder: tokenizer.json (~420 tokens), tfds/shapes_world_sft (train 4000 /
          test 550 images with prompt, layout plan, detailed caption, GenEval metadata) and
          tfds/shapes_world_prompts (train 2200 / test 550 prompts; test = held-out compositions).
Variants:
  shapes     64 px, out data/shapes (the default; the demo's data stage).
  shapes256  256 px, out data/shapes256: `jaxgen data build --config configs/data.py:shapes256`;
             not timed.
  tiny       66 / 22 images, 44 / 22 prompts, out data/tiny, for tests:
             `jaxgen data build --config configs/data.py:tiny`; a few seconds.
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
