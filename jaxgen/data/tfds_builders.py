"""TFDS builders (array_record files, no TensorFlow needed) for ShapesWorld and user datasets.

`write_dataset(name, features, splits, data_dir)` writes `data_dir/<name>/1.0.0/` with one
array_record file per split through a `tfds.core.GeneratorBasedBuilder`; `tfds.data_source(name,
data_dir=..., split=...)` reads it back (random access, no TensorFlow). Image features are fixed
shape uint8 tensors (TFDS's Image feature needs TensorFlow for PNG encoding).

Feature specs: 'text' (str; read back as str by `read_split`), 'int', or ('image', size).
Datasets built by `jaxgen.data.build`:
  shapes_world_sft      prompt, category, plan, caption, image, metadata   splits train, test
  shapes_world_prompts  prompt, category, metadata                          splits train, test
"""

from __future__ import annotations

import pathlib
import shutil
import types

import numpy as np

from jaxgen.errors import UserError

SFT_FEATURES = {"prompt": "text", "category": "text", "plan": "text", "caption": "text",
                "metadata": "text"}
PROMPT_FEATURES = {"prompt": "text", "category": "text", "metadata": "text"}
VERSION = "1.0.0"


def sft_features(image_size: int) -> dict:
    return {**SFT_FEATURES, "image": ("image", int(image_size))}


def _tfds_features(features: dict):
    import tensorflow_datasets as tfds

    out = {}
    for key, kind in features.items():
        if kind == "text":
            out[key] = tfds.features.Text()
        elif kind == "int":
            out[key] = tfds.features.Tensor(shape=(), dtype=np.int64)
        elif isinstance(kind, (tuple, list)) and kind[0] == "image":
            out[key] = tfds.features.Tensor(shape=(kind[1], kind[1], 3), dtype=np.uint8)
        else:
            raise ValueError(f"unknown feature kind {kind!r} for {key!r}")
    return tfds.features.FeaturesDict(out)


def _make_builder_class(name: str):
    import tensorflow_datasets as tfds

    def body(ns):
        ns["name"] = name
        ns["VERSION"] = tfds.core.Version(VERSION)

        def __init__(self, *, features, splits, **kwargs):
            self._jg_features = features
            self._jg_splits = splits
            tfds.core.GeneratorBasedBuilder.__init__(self, **kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=_tfds_features(self._jg_features))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in self._jg_splits}

        def _generate_examples(self, split):
            for i, rec in enumerate(self._jg_splits[split]):
                yield i, {k: rec[k] for k in self._jg_features}

        ns.update(__init__=__init__, _info=_info, _split_generators=_split_generators,
                  _generate_examples=_generate_examples)

    return types.new_class(name, (tfds.core.GeneratorBasedBuilder,),
                           {"skip_registration": True}, body)


def write_dataset(name: str, features: dict, splits: dict, data_dir) -> str:
    """Write splits (split name -> iterable of record dicts) as array_record; return the dir."""
    # a previous build of the same name would be silently reused by TFDS: start clean
    shutil.rmtree(pathlib.Path(data_dir) / name, ignore_errors=True)
    builder = _make_builder_class(name)(features=features, splits=splits, data_dir=str(data_dir))
    builder.download_and_prepare(file_format="array_record")
    return str(builder.data_dir)


def _decode(rec: dict) -> dict:
    return {k: (v.decode("utf-8") if isinstance(v, bytes) else v) for k, v in rec.items()}


class DecodedSource:
    """Random-access source over a TFDS array_record split yielding str texts and numpy arrays
    (a grain RandomAccessDataSource: __len__ and __getitem__)."""

    def __init__(self, source):
        self._source = source

    def __len__(self):
        return len(self._source)

    def __getitem__(self, index):
        return _decode(self._source[index])

    def __repr__(self):
        return f"DecodedSource({self._source!r})"


def read_split(tfds_dir, name: str, split: str) -> DecodedSource:
    """The split of a dataset written by `write_dataset` as a decoded random-access source."""
    import tensorflow_datasets as tfds

    try:
        source = tfds.data_source(name, data_dir=str(tfds_dir), split=split)
    except Exception as e:  # tfds raises several types for a missing dataset / split
        raise UserError(f"cannot read dataset {name!r} split {split!r} under {tfds_dir}: {e}. "
                        "Build it with `jaxgen data build --config configs/data.py:shapes`") from None
    return DecodedSource(source)
