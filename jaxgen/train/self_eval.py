"""The policy's own mistakes as judge training data (Janus-Pro-R1's self-evaluation idea).

A judge trained only on clean renderings never sees a malformed shape, so it cannot rank the
policy's samples, which differ mostly in how well each shape is drawn. Here each training scene
also gets a degraded copy drawn from the SFT policy itself: the policy reads the scene's prompt,
layout plan and ground-truth image codes (teacher forcing) and samples every image code; a random
fraction of the scene's codes is replaced by those samples. The result shows the kind of local
errors the policy makes, on the same scene as its clean twin, so the only difference the judge
can learn from the pair is drawing quality. Labels come from how the image was made (rendered vs
degraded), never from the pixel evaluator.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxgen.checkpoint import load_checkpoint
from jaxgen.data import judge as judge_data
from jaxgen.data.images import images_to_codes, resize_images
from jaxgen.errors import UserError
from jaxgen.models import janus
from jaxgen.train.sft_loss import forward_hidden
from jaxgen.train.sft_rows import KIND_IMAGE, generation_row, reasoning_text, stack_rows


def teacher_forced_samples(params, mc, batch, rng, temperature: float, num_codes: int):
    """Image codes sampled at every image position of teacher-forced generation rows.

    batch: generation rows (sft_rows.generation_row, stacked; right-padded, unpacked) [B, L];
    returns int32 [B, num_codes], the policy's sample for each image target given the true
    prefix (prompt, plan and the ground-truth codes before it).
    """
    hidden = forward_hidden(params, mc, batch)  # [B, L, D]
    is_image = batch["target_kind"] == KIND_IMAGE
    # stable argsort puts each row's image-target positions first, in order
    idx = jnp.argsort(~is_image, axis=1, stable=True)[:, :num_codes]
    h = jnp.take_along_axis(hidden, idx[..., None], axis=1)  # [B, N, D]
    logits = janus.image_logits(params, mc, h).astype(jnp.float32)
    return jax.random.categorical(rng, logits / temperature).astype(jnp.int32)


def degrade_codes(clean_bn, sampled_bn, rng: np.random.Generator, low: float, high: float):
    """Replace a per-row fraction q ~ U(low, high) of the clean codes by the sampled ones."""
    q = rng.uniform(low, high, size=(clean_bn.shape[0], 1))
    take = rng.random(clean_bn.shape) < q
    return np.where(take, sampled_bn, clean_bn).astype(np.int32)


def degraded_images(policy_params, mc, rows: dict, codes_bn: np.ndarray, seed: int,
                    temperature: float = 1.0, fraction_range=(0.25, 1.0),
                    batch_size: int = 64) -> np.ndarray:
    """uint8 [B, H, W, 3]: each scene redrawn with part of its codes from the policy.

    rows: the scenes' generation rows (unpacked), codes_bn: their ground-truth codes [B, N].
    """
    num_codes = codes_bn.shape[1]
    sample = jax.jit(lambda p, b, k: teacher_forced_samples(p, mc, b, k, temperature, num_codes))
    decode = jax.jit(lambda p, c: jnp.clip(jnp.round((janus.vq_decode(p, mc, c) + 1.0) * 127.5),
                                           0, 255).astype(jnp.uint8))
    np_rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    out = []
    n = codes_bn.shape[0]
    for start in tqdm(range(0, n, batch_size), desc="policy-degraded judge images", leave=False):
        stop = min(start + batch_size, n)
        pad = batch_size - (stop - start)  # one compiled shape for every batch
        part = {k: np.concatenate([v[start:stop]] + [v[stop - 1:stop]] * pad)
                for k, v in rows.items()}
        sampled = np.asarray(sample(policy_params, part, jax.random.fold_in(key, start)))
        clean = np.concatenate([codes_bn[start:stop]] + [codes_bn[stop - 1:stop]] * pad)
        mixed = degrade_codes(clean, sampled, np_rng, *fraction_range)
        out.append(np.asarray(decode(policy_params, mixed))[: stop - start])
    return np.concatenate(out)


def degraded_examples(config, records, tokenizer, mc, vq_params, fraction: float) -> list:
    """Describe rows for a `fraction` of `records` whose image is the policy-degraded copy and
    whose answer is judge.DEGRADED_ANSWER. The policy is config.init_checkpoint (the SFT model
    the judge starts from, as in the demo)."""
    dc = config.data
    if not config.get("init_checkpoint"):
        raise UserError("data.degraded_fraction > 0 draws degraded images with the policy: set "
                        "init_checkpoint to the SFT checkpoint the judge starts from")
    rng = np.random.default_rng(int(dc.seed) + 3)
    chosen = [r for r in records if rng.random() < fraction]
    if not chosen:
        return []
    policy, pmc, _ = load_checkpoint(config.init_checkpoint)
    vq_model = {"vqmodel": jax.tree.map(jnp.asarray, vq_params)}
    encode = jax.jit(lambda x: janus.vq_encode(vq_model, pmc, x))
    images = np.stack([np.asarray(r["image"], np.uint8) for r in chosen])
    codes = images_to_codes(encode, resize_images(images, pmc.vq.image_size))
    # room for the longest prompt + plan + image; rows are unpacked (plain causal attention)
    seq_len = int(config.get("degraded_seq_len", 0)) or 256
    rows = stack_rows([generation_row(tokenizer, pmc, r["prompt"], reasoning_text(r, dc.reasoning),
                                      c, seq_len, config.loss) for r, c in zip(chosen, codes)])
    pixels = degraded_images(policy, pmc, rows, codes, int(dc.seed) + 4,
                             float(dc.get("degraded_temperature", 1.0)),
                             tuple(dc.get("degraded_code_fraction", (0.25, 1.0))))
    # back at the records' size, so clean and degraded rows go through the same resize
    pixels = resize_images(pixels, images.shape[1])
    return [{"image": im, "prompt": r["prompt"], "question": judge_data.DESCRIBE_QUESTION,
             "answer": judge_data.DEGRADED_ANSWER, "category": judge_data.record_tag(r),
             "perturbation": "degraded"} for im, r in zip(pixels, chosen)]
