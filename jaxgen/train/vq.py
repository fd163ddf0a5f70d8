"""VQ image-tokenizer trainer (LlamaGen recipe) for ShapesWorld.

Loss = l2_weight * MSE(recon, x) + codebook_weight * codebook + commit_weight * commitment
       [+ gan_weight * hinge generator loss after gan_start_step (PatchGAN discriminator)]
       [+ perceptual_weight * LPIPS-style VGG16 distance, when the user gives VGG weights]
The discriminator is trained in the same step on its own hinge loss: the two terms use
stop-gradients so each parameter set only receives its own gradient (one optimizer, one step).

Data: procedurally rendered ShapesWorld scenes (image i of the stream is a deterministic
function of (seed, i)), so the stream and its checkpointed position resume exactly. Held-out
scenes come from the 'test' split with a different seed.

Outputs in the workdir: checkpoints/, metrics.jsonl, tb/, samples/ (recon grids) and
`vq_params.safetensors` (the VQModel params, codebook rows l2-normalised so HF-style and
LlamaGen-style code lookups agree) for the SFT stage.
"""

from __future__ import annotations

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import checkpoint as ckpt_lib
from jaxgen import parallel
from jaxgen.data import prompts, shapes_world
from jaxgen.errors import UserError
from jaxgen.models.config import VQConfig
from jaxgen.models.janus import config_from_configdict
from jaxgen.models.vq import VQModel, l2_normalize
from jaxgen.train import batching, losses, loop as loop_lib, optim, state as state_lib
from jaxgen.train.metrics import save_image_grid, to_uint8

VQ_PARAMS_FILE = ckpt_lib.VQ_PARAMS_FILE


# ------------------------------------------------------------------------------ modules


class PatchDiscriminator(nn.Module):
    """PatchGAN: stride-2 4x4 convs with LeakyReLU, then a 1-channel logit map [B, h, w, 1]."""
    channels: int = 64
    num_layers: int = 3
    slope: float = 0.2

    @nn.compact
    def __call__(self, x_bhwc):
        h = x_bhwc.astype(jnp.float32)
        ch = self.channels
        for i in range(self.num_layers):
            h = nn.Conv(ch, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), name=f"conv_{i}")(h)
            if i > 0:
                h = nn.GroupNorm(num_groups=min(32, ch), name=f"norm_{i}")(h)
            h = nn.leaky_relu(h, self.slope)
            ch = ch * 2
        return nn.Conv(1, (3, 3), padding=((1, 1), (1, 1)), name="logits")(h)


# VGG16 feature layers (torchvision `features` indices of the convs) and LPIPS taps.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_LPIPS_TAPS = (1, 3, 6, 9, 12)  # conv index (0-based over convs) after whose ReLU a feature is taken
# LPIPS input normalisation (ScalingLayer constants, for inputs in [-1, 1]).
_LPIPS_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_LPIPS_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


def load_perceptual_weights(path) -> dict:
    """VGG16 weights in torchvision names (`features.{i}.weight|bias`, OIHW) and optional LPIPS
    linear heads (`lin{k}.model.1.weight`, [1, C, 1, 1]) from a safetensors file."""
    path = pathlib.Path(path)
    fix = ("pass a safetensors file with torchvision VGG16 'features.N.weight' tensors or set "
           "--config.loss.perceptual_weight=0")
    if not path.exists():
        raise UserError(f"perceptual weights {path} not found; {fix}")
    raw = ckpt_lib.load_flat(path, fix)
    convs, lins = [], []
    conv_ids = sorted({int(k.split(".")[1]) for k in raw if k.startswith("features.")})
    for i in conv_ids:
        w = raw[f"features.{i}.weight"]
        convs.append((jnp.asarray(np.transpose(w, (2, 3, 1, 0))), jnp.asarray(raw[f"features.{i}.bias"])))
    n_convs = sum(1 for c in _VGG16 if c != "M")
    if len(convs) != n_convs:
        raise UserError(f"perceptual weights {path}: expected {n_convs} VGG16 convs, found "
                        f"{len(convs)}")
    for k in range(len(_LPIPS_TAPS)):
        key = f"lin{k}.model.1.weight"
        lins.append(jnp.asarray(raw[key].reshape(-1)) if key in raw else None)
    return {"convs": convs, "lins": lins}


def perceptual_distance(weights: dict, a_bhwc, b_bhwc):
    """LPIPS-style distance per image f32[B]: unit-normalised VGG features, squared difference,
    channel weights (LPIPS heads when given, else a plain mean), spatial mean, summed over taps."""
    def features(x):
        h = (x.astype(jnp.float32) - _LPIPS_SHIFT) / _LPIPS_SCALE
        out, ci = [], 0
        for c in _VGG16:
            if c == "M":
                h = nn.max_pool(h, (2, 2), strides=(2, 2))
                continue
            w, bias = weights["convs"][ci]
            h = jax.nn.relu(jax.lax.conv_general_dilated(
                h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias)
            if ci in _LPIPS_TAPS:
                out.append(h)
            ci += 1
        return out

    total = 0.0
    for k, (fa, fb) in enumerate(zip(features(a_bhwc), features(b_bhwc))):
        na = fa / (jnp.sqrt(jnp.sum(fa ** 2, -1, keepdims=True)) + 1e-10)
        nb = fb / (jnp.sqrt(jnp.sum(fb ** 2, -1, keepdims=True)) + 1e-10)
        d = (na - nb) ** 2
        lin = weights["lins"][k]
        d = jnp.sum(d * lin, -1) if lin is not None else jnp.mean(d, -1)
        total = total + jnp.mean(d, axis=(1, 2))
    return total


# --------------------------------------------------------------------------------- data


def vq_config_of(config) -> VQConfig:
    return config_from_configdict(config.model).vq


def render_example(index: int, seed: int, split: str, image_size: int) -> dict:
    """Image `index` of the deterministic ShapesWorld stream: {'image': f32[H, W, 3] in [-1, 1]}."""
    rng = np.random.default_rng([seed, index])
    for _ in range(8):  # a rare unplaceable scene: draw another from the same stream
        try:
            _, _, scene = prompts.sample_prompt(rng, split, canvas=image_size)
            break
        except UserError:
            continue
    else:
        raise UserError(f"could not render ShapesWorld scenes at image_size={image_size}")
    img = shapes_world.render(scene)
    return {"image": img.astype(np.float32) / 127.5 - 1.0}


def heldout_images(config) -> np.ndarray:
    dc, q = config.data, vq_config_of(config)
    return np.stack([render_example(i, int(dc.heldout_seed), "test", q.image_size)["image"]
                     for i in range(int(dc.heldout_size))])


# --------------------------------------------------------------------------------- model


def _unbox(tree):
    return nn.meta.unbox(tree)


def logical_axes_from_boxed(boxed):
    def axes(leaf):
        if isinstance(leaf, nn.meta.AxisMetadata):
            return tuple(leaf.names)
        return (None,) * np.ndim(leaf)
    return jax.tree.map(axes, boxed, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def _models(config):
    q = vq_config_of(config)
    vq_model = VQModel(q, l2_norm_lookup=bool(config.loss.l2_norm_lookup))
    lc = config.loss
    disc = PatchDiscriminator(int(lc.disc_channels), int(lc.disc_layers)) \
        if float(lc.gan_weight) > 0 else None
    return q, vq_model, disc


def init_vq_train_params(config, rng):
    """Boxed params {'vq': ..., ['disc': ...]} (boxed: they carry logical axis names)."""
    q, vq_model, disc = _models(config)
    x = jnp.zeros((1, q.image_size, q.image_size, q.in_channels), jnp.float32)
    r1, r2 = jax.random.split(rng)
    params = {"vq": vq_model.init(r1, x)["params"]}
    if disc is not None:
        params["disc"] = disc.init(r2, x)["params"]
    return params


def make_loss_fn(config, perceptual=None):
    q, vq_model, disc = _models(config)
    lc = config.loss
    gan_w, gan_start = float(lc.gan_weight), int(lc.gan_start_step)

    def loss_fn(params, batch, rng):  # noqa: ARG001 - deterministic
        x = batch["image"]
        recon, codes, cb, commit = vq_model.apply({"params": params["vq"]}, x)
        recon = recon.astype(jnp.float32)
        l2 = losses.l2_reconstruction(recon, x)
        total = float(lc.l2_weight) * l2 + float(lc.codebook_weight) * cb + \
            float(lc.commit_weight) * commit
        rows = jnp.float32(x.shape[0])
        metrics = {"l2": (l2 * rows, rows), "codebook": (cb * rows, rows),
                   "commit": (commit * rows, rows),
                   "psnr": (jnp.sum(losses.psnr(recon, x)), rows)}
        if perceptual is not None and float(lc.perceptual_weight) > 0:
            p = jnp.mean(perceptual_distance(perceptual, recon, x))
            total = total + float(lc.perceptual_weight) * p
            metrics["perceptual"] = (p * rows, rows)
        if disc is not None:
            active = (batch["step"][0] >= gan_start).astype(jnp.float32)
            frozen_d = jax.lax.stop_gradient(params["disc"])
            g = losses.hinge_generator_loss(disc.apply({"params": frozen_d}, recon))
            d = losses.hinge_discriminator_loss(
                disc.apply({"params": params["disc"]}, x),
                disc.apply({"params": params["disc"]}, jax.lax.stop_gradient(recon)))
            total = total + active * (gan_w * g + d)
            metrics["gan_g"] = (g * rows, rows)
            metrics["gan_d"] = (d * rows, rows)
        metrics["loss"] = (total * rows, rows)
        return total * rows, {"denominator": rows, "metrics": metrics}

    return loss_fn


def restart_dead_codes(codebook_kd, z_nd, rng, noise: float, l2_lookup: bool):
    """codebook [K, D] with every row that no latent of z [N, D] picks replaced by a latent drawn
    with probability proportional to its squared quantisation error (k-means++ style), plus
    `noise` * std of Gaussian noise. Pure and deterministic given rng."""
    book = codebook_kd.astype(jnp.float32)
    z = z_nd.astype(jnp.float32)
    if l2_lookup:
        z, book = l2_normalize(z), l2_normalize(book)
    dist_nk = jnp.sum((z[:, None, :] - book[None]) ** 2, axis=-1)
    codes = jnp.argmin(dist_nk, axis=1)
    counts = jnp.bincount(codes, length=book.shape[0])
    # New codes go where the codebook serves latents worst, not where latents are most common:
    # uniform picks split the plain background (3/4 of every ShapesWorld image) over hundreds of
    # codes and leave the image tokens needlessly unpredictable for the language model.
    err = jnp.min(dist_nk, axis=1)
    r1, r2 = jax.random.split(rng)
    picks = jax.random.categorical(r1, jnp.log(err + 1e-12), shape=(book.shape[0],))
    fresh = z[picks]
    fresh = fresh + noise * jax.random.normal(r2, fresh.shape) * jnp.std(fresh)
    dead = (counts == 0)[:, None]
    return jnp.where(dead, fresh.astype(codebook_kd.dtype), codebook_kd)


def make_dead_code_restart(config, probe_images):
    """Jitted `restart(vq_params, rng) -> vq_params`: `restart_dead_codes` on the latents of a
    fixed set of probe images.

    Codebook collapse (a few codes serving every colour) is what limits a small VQ trained for
    minutes; restarting dead codes from real encoder outputs (Jukebox, SoundStream) keeps the
    codebook in use. Depends only on params, the probe set and rng: resumes stay exact.
    """
    _, vq_model, _ = _models(config)
    probe = jnp.asarray(probe_images)
    noise = float(config.loss.restart_noise)

    @jax.jit
    def restart(vq_params, rng):
        z = vq_model.apply({"params": vq_params}, probe, method=VQModel.encode_continuous)
        z_nd = z.reshape(-1, z.shape[-1])
        book = restart_dead_codes(vq_params["codebook"], z_nd, rng, noise,
                                  bool(vq_model.l2_norm_lookup))
        return {**vq_params, "codebook": book}

    return restart


def export_params(vq_params, path):
    """Write VQModel params (codebook rows l2-normalised, float32) as one safetensors file
    (`jaxgen.checkpoint.save_vq_params`); every process calls it, process 0 writes."""

    def save(p):
        p = jax.tree.map(lambda v: np.asarray(v, np.float32), dict(p))
        p["codebook"] = np.asarray(l2_normalize(jnp.asarray(p["codebook"])))
        return ckpt_lib.save_vq_params(path, p)

    ckpt_lib.export_from_mesh("vq-export", save, vq_params)
    return pathlib.Path(path)


load_params = ckpt_lib.load_vq_params


def reconstruct_fn(config):
    """jit(params, images) -> (recon, codes)."""
    _, vq_model, _ = _models(config)

    @jax.jit
    def reconstruct(vq_params, x):
        recon, codes, _, _ = vq_model.apply({"params": vq_params}, x)
        return recon, codes
    return reconstruct


def evaluate(config, vq_params, images, reconstruct=None) -> dict:
    """Held-out PSNR (dB), codebook usage (fraction of entries used) and code perplexity."""
    q = vq_config_of(config)
    reconstruct = reconstruct or reconstruct_fn(config)
    bs = int(config.eval_batch_size)
    psnrs, codes_all, recons = [], [], []
    for i in range(0, len(images), bs):
        r, c = reconstruct(vq_params, jnp.asarray(images[i:i + bs]))
        psnrs.append(np.asarray(losses.psnr(r, jnp.asarray(images[i:i + bs]))))
        codes_all.append(np.asarray(c))
        recons.append(np.asarray(r))
    codes = np.concatenate(codes_all)
    usage, perplexity = losses.codebook_usage(jnp.asarray(codes), q.num_embeddings)
    return {"psnr": float(np.mean(np.concatenate(psnrs))), "codebook_usage": float(usage),
            "code_perplexity": float(perplexity), "_recon": np.concatenate(recons)}


# --------------------------------------------------------------------------------- train


def train(config, workdir) -> dict:
    """Train (or resume) the VQ tokenizer in `workdir`.

    Returns {'metrics': final train/eval metrics, 'params_path': exported VQ params,
    'psnr': held-out PSNR, 'codebook_usage', 'step', 'status'}.
    """
    workdir = pathlib.Path(workdir)
    q = vq_config_of(config)
    mesh, layout = parallel.mesh_from_config(config.mesh)
    parallel.check_batch_divides(int(config.batch_size), mesh)
    perceptual = None
    if float(config.loss.perceptual_weight) > 0:
        perceptual = load_perceptual_weights(config.loss.perceptual_weights)
    opt = optim.make_optimizer(config)
    rng = jax.random.PRNGKey(int(config.seed))
    boxed = jax.eval_shape(lambda r: init_vq_train_params(config, r), rng)
    axes = logical_axes_from_boxed(boxed)
    state, shardings = state_lib.init_state(
        lambda r: _unbox(init_vq_train_params(config, r)), opt, rng, mesh, layout, axes)
    step_fn = state_lib.make_train_step(
        make_loss_fn(config, perceptual), opt, shardings, mesh,
        accum_steps=int(config.grad_accum_steps), compute_dtype_name=config.compute_dtype,
        learning_rate_fn=optim.make_schedule(config.optim, int(config.total_steps)),
        layout=layout)

    dc = config.data
    data = batching.IndexedBatcher(
        lambda i: render_example(i, int(dc.seed), "train", q.image_size), int(config.batch_size))

    class _WithStep:  # the GAN switch needs the step inside the batch
        def __init__(self, it):
            self.it, self.step = it, 0

        def __next__(self):
            b = next(self.it)
            self.step = self.it.next_index // int(config.batch_size)
            b["step"] = np.full((len(b["image"]),), self.step - 1, np.int32)
            return b

        def get_state(self):
            return self.it.get_state()

        def set_state(self, s):
            self.it.set_state(s)

    every, until = int(config.loss.restart_every), int(config.loss.restart_until)
    if every > 0:
        probe = np.stack([render_example(i, int(dc.seed) + 1, "train", q.image_size)["image"]
                          for i in range(int(config.loss.restart_probe_images))])
        restart = make_dead_code_restart(config, probe)
        plain_step, restart_key = step_fn, jax.random.PRNGKey(int(config.seed) + 1)

        def step_fn(st, batch):
            st, metrics = plain_step(st, batch)
            step = int(st.step)
            if step % every == 0 and step <= until:
                vq_params = restart(st.params["vq"], jax.random.fold_in(restart_key, step))
                vq_params = jax.device_put(vq_params, shardings.params["vq"])
                st = st.replace(params={**st.params, "vq": vq_params})
            return st, metrics

    held = heldout_images(config)
    reconstruct = reconstruct_fn(config)
    n_grid = int(config.sample_grid)

    def eval_fn(st, step):
        vq_params = parallel.to_host(st.params["vq"])
        out = evaluate(config, vq_params, held, reconstruct)
        pair = np.concatenate([to_uint8(held[:n_grid]), to_uint8(out.pop("_recon")[:n_grid])])
        save_image_grid(workdir / "samples" / f"vq_step{step:06d}.png", pair, columns=n_grid)
        return out

    loop_cfg = loop_lib.LoopConfig.from_config(config, desc="vq")
    result = loop_lib.run(workdir=workdir, state=state, shardings=shardings, train_step=step_fn,
                          data=_WithStep(data), mesh=mesh, loop=loop_cfg, config=config,
                          eval_fn=eval_fn)
    final_state = result["state"]
    params_path = export_params(final_state.params["vq"], workdir / VQ_PARAMS_FILE)
    ev = eval_fn(final_state, int(result["step"]))  # also writes the final reconstruction grid
    return {"metrics": {**result["metrics"], **{f"eval_{k}": v for k, v in ev.items()}},
            "params_path": str(params_path), "psnr": ev["psnr"],
            "codebook_usage": ev["codebook_usage"], "step": result["step"],
            "status": result["status"]}


