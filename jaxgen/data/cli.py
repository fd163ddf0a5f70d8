"""`jaxgen data build`: build the ShapesWorld tokenizer and datasets."""

from __future__ import annotations

import json

from jaxgen.config import load_config
from jaxgen.data.build import build_all


def build_args(parser):
    parser.add_argument("--config", default="configs/data.py:shapes",
                        help="data config, e.g. configs/data.py:shapes")
    parser.add_argument("--out", "--out_dir", dest="out_dir", default=None,
                        help="output directory (default: config.out_dir)")


def build(args) -> int:
    config = load_config(args.config, args.config_overrides)
    out_dir = args.out_dir or config.out_dir
    info = build_all(config, out_dir)
    print(json.dumps({"out_dir": str(out_dir), "counts": info["counts"],
                      "seconds": info["seconds"]}, indent=2))
    return 0
