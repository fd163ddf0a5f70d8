"""Metrics sinks: a JSONL file and TensorBoard in the work directory, plus image grids.

`MetricsWriter(workdir)` appends one JSON object per `write(step, metrics)` to
`<workdir>/metrics.jsonl` and mirrors scalars to TensorBoard (`<workdir>/tb`). Only process 0
writes. `save_image_grid` writes a PNG mosaic (sample images at eval steps).
"""

from __future__ import annotations

import json
import math
import pathlib
import time

import jax
import numpy as np


def _scalar(v):
    v = np.asarray(v)
    return float(v) if v.size == 1 else None


class MetricsWriter:
    def __init__(self, workdir, tensorboard: bool = True):
        self.workdir = pathlib.Path(workdir)
        self.enabled = jax.process_index() == 0
        self.path = self.workdir / "metrics.jsonl"
        self._tb = None
        if self.enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from tensorboardX import SummaryWriter
                    self._tb = SummaryWriter(str(self.workdir / "tb"))
                except Exception:  # noqa: BLE001 - TensorBoard is optional
                    self._tb = None

    def write(self, step: int, metrics: dict, prefix: str = ""):
        if not self.enabled:
            return
        row = {"step": int(step), "time": time.time()}
        for k, v in metrics.items():
            s = _scalar(v)
            if s is None:
                continue
            row[prefix + k] = s if math.isfinite(s) else str(s)
            if self._tb is not None:
                self._tb.add_scalar(prefix + k, s, int(step))
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def flush(self):
        if self._tb is not None:
            self._tb.flush()

    def close(self):
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_jsonl(path) -> list[dict]:
    path = pathlib.Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def image_grid(images_nhwc_uint8, columns: int | None = None) -> np.ndarray:
    """Tile N images [N, H, W, 3] uint8 into one [rows*H, cols*W, 3] array."""
    imgs = np.asarray(images_nhwc_uint8)
    n, h, w, c = imgs.shape
    cols = columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.zeros((rows * h, cols * w, c), np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = imgs[i]
    return grid


def to_uint8(pixels_nhwc) -> np.ndarray:
    """[-1, 1] floats -> uint8 [0, 255]."""
    x = np.asarray(pixels_nhwc, np.float32)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def save_image_grid(path, images_nhwc_uint8, columns: int | None = None):
    from PIL import Image
    if jax.process_index() != 0:
        return
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images_nhwc_uint8, columns)).save(path)
