"""Pretrain the understanding tower on per-patch scene labels before a judge's SFT.

Janus-Pro's SigLIP tower comes pretrained; a ShapesWorld judge's tower starts from random
weights, and 300 steps of the describe task teach it little. This stage gives the tower what a
pretrained encoder brings: for every patch of the vision grid, which shape and which colour of
object covers the patch's centre (or background), read off the scene's layout plan, learned with
a linear head per attribute. Labels come from the renderer's plan, never from the evaluator.

    tower_params, metrics = pretrain_tower(model_config, records, PretrainSettings(steps=600))

Measured (docs/experiments.md, question 5; 2026-11-23, 2-core CPU): 600 steps (~95 s) reach 89%
held-out shape accuracy on object patches with the conv stem.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxgen.data.images import resize_images
from jaxgen.data.reasoning import GRID, parse_plan
from jaxgen.data.shapes_world import COLOR_NAMES, SHAPES
from jaxgen.errors import UserError
from jaxgen.models import janus
from jaxgen.models.config import JanusConfig

BACKGROUND = 0  # label of patches no object covers; shape k is SHAPES[k - 1], colour likewise


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
    steps: int = 600
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    heldout_fraction: float = 0.1  # records kept out of training to report accuracy
    seed: int = 0


def patch_labels(plan: str, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(shape int32[grid*grid], colour int32[grid*grid]) in row-major patch order.

    A patch takes the attributes of the smallest planned box that contains its centre (a small
    object drawn over a large one is the one seen there); 0 is background, and an object without
    a colour word gets colour 0 too.
    """
    parsed = parse_plan(plan)
    if not parsed.ok:
        raise UserError(f"cannot read the layout plan {plan[:60]!r}: {parsed.error}")
    centres = (np.arange(grid) + 0.5) * GRID / grid
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    shape = np.zeros((grid, grid), np.int32)
    colour = np.zeros((grid, grid), np.int32)
    best_area = np.full((grid, grid), np.inf)
    for obj in parsed.objects:
        x0, y0, x1, y1 = obj["box"]
        area = (x1 - x0) * (y1 - y0)
        inside = (cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1) & (area < best_area)
        best_area[inside] = area
        shape[inside] = 1 + SHAPES.index(obj["shape"])
        colour[inside] = 1 + COLOR_NAMES.index(obj["color"]) if "color" in obj else BACKGROUND
    return shape.reshape(-1), colour.reshape(-1)


class _PatchHeads(nn.Module):
    """Linear shape and colour classifiers on every patch feature [B, N, D]."""

    @nn.compact
    def __call__(self, feats_bnd):
        return (nn.Dense(1 + len(SHAPES), name="shape")(feats_bnd),
                nn.Dense(1 + len(COLOR_NAMES), name="colour")(feats_bnd))


def patch_label_arrays(mc: JanusConfig, records) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels float32[R, S, S, 3] in [-1, 1] at the tower's size, shape and colour labels [R, N]."""
    side = mc.vision.image_size // mc.vision.patch_size
    images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
    pixels = resize_images(images, mc.vision.image_size).astype(np.float32) / 127.5 - 1.0
    labels = [patch_labels(r["plan"], side) for r in records]
    return pixels, np.stack([s for s, _ in labels]), np.stack([c for _, c in labels])


def make_loss_fn(mc: JanusConfig):
    tower, heads = janus.vision_module(mc), _PatchHeads()

    def loss_fn(params, pixels, shape_bn, colour_bn):
        """Mean per-patch cross-entropy of shape plus colour; aux: correct-shape mask [B, N]."""
        feats = tower.apply({"params": params["tower"]}, pixels)
        shape_logits, colour_logits = heads.apply({"params": params["heads"]}, feats)
        ce = optax.softmax_cross_entropy_with_integer_labels
        loss = ce(shape_logits, shape_bn).mean() + ce(colour_logits, colour_bn).mean()
        return loss, shape_logits.argmax(-1) == shape_bn
    return loss_fn, heads


def pretrain_tower(mc: JanusConfig, records, settings: PretrainSettings, tower_params=None):
    """Train the vision tower (from `tower_params`, else a fresh init) on patch labels.

    Returns (tower params, metrics {'loss', 'heldout_shape_acc_objects', 'heldout_shape_acc'}).
    """
    if mc.understanding_input != "siglip":
        raise UserError("vision_pretrain trains the SigLIP-path tower, but this model reads "
                        f"images as {mc.understanding_input!r}; set "
                        "--config.model.understanding_input=siglip or vision_pretrain.steps=0")
    pixels, shapes, colours = patch_label_arrays(mc, records)
    n_held = max(1, int(len(records) * settings.heldout_fraction))
    if len(records) - n_held < 1:
        raise UserError(f"vision_pretrain needs more than {n_held} records; got {len(records)}")
    n_train = len(records) - n_held
    rng = jax.random.PRNGKey(settings.seed)
    loss_fn, heads = make_loss_fn(mc)
    if tower_params is None:
        tower_params = janus.init_params(mc, rng)["vision_model"]
    params = {"tower": tower_params,
              "heads": heads.init(jax.random.fold_in(rng, 1),
                                  jnp.zeros((1, 1, mc.vision.hidden_size)))["params"]}
    warmup = min(settings.warmup_steps, settings.steps // 2)  # leaves the cosine >= 1 step
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, settings.learning_rate, warmup, max(settings.steps, warmup + 1),
        settings.learning_rate * 0.05)
    opt = optax.adamw(schedule)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, x, s, c):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, s, c)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    order = np.random.default_rng(settings.seed)
    loss = jnp.nan
    for _ in tqdm(range(settings.steps), desc="vision pretrain", dynamic_ncols=True):
        idx = order.integers(0, n_train, settings.batch_size)
        params, opt_state, loss = step(params, opt_state, pixels[idx], shapes[idx], colours[idx])
    _, correct = jax.jit(loss_fn)(params, pixels[n_train:], shapes[n_train:], colours[n_train:])
    correct = np.asarray(correct)
    on_objects = shapes[n_train:] != BACKGROUND
    metrics = {"loss": float(loss), "heldout_shape_acc": float(correct.mean()),
               "heldout_shape_acc_objects": float(correct[on_objects].mean())
               if on_objects.any() else float("nan")}
    return params["tower"], metrics
