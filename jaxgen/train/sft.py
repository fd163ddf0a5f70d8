"""Supervised fine-tuning of the unified model: reasoning-then-image and image understanding.

    result = train(config, workdir)   # `jaxgen train sft --config configs/sft.py:shapes`

One teacher-forced loss over two kinds of rows: generation (prompt, reasoning, then the image's
VQ codes) and understanding (an image and a question, then the answer), in a fixed mix per
batch. The pieces:
  sft_rows   the row format: target kinds, tokenised rows, packing
  sft_data   records, the rows of both tasks, the workdir cache, the batcher
  sft_loss   the weighted NLL, prompt dropout (CFG), head capacities
  this file  the model's config and init (random, a checkpoint, a pretrained vision tower), the
             shared training loop, the held-out accuracy eval and the exported checkpoint.
The VQ tokenizer (`vq_params`, from `jaxgen train vq`) is trained first; a real model's
tokenizer and VQ come with its checkpoint (`init_checkpoint`, `jaxgen convert hf-to-jax`).
"""

from __future__ import annotations

import dataclasses
import pathlib

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import checkpoint as ckpt_lib
from jaxgen import parallel
from jaxgen.data import tokenizer as tokenizer_lib
from jaxgen.data.tokenizer import tokenize_prompts
from jaxgen.errors import UserError
from jaxgen.eval import geneval
from jaxgen.models import janus
from jaxgen.sampling.sampler import SampleOptions, sample
from jaxgen.train import loop as loop_lib, optim, state as state_lib
from jaxgen.train import vision_pretrain as vp
from jaxgen.train import vq as vq_lib
from jaxgen.train.metrics import save_image_grid
from jaxgen.train.sft_data import MixedBatcher, cached_dataset, heldout_metadata, load_records
from jaxgen.train.sft_loss import head_capacities, make_loss_fn

VISION_PRETRAIN_FILE = "vision_pretrain.msgpack"
GENERATION_EMBEDDING_INITS = ("random", "codebook")


def load_tokenizer(path):
    """The ShapesWorld (or any HF fast) tokenizer saved in `path`."""
    path = str(path)
    if not path or not pathlib.Path(path).exists():
        raise UserError(f"tokenizer {path!r} not found; build the data first (`jaxgen data build "
                        "--out D`) and pass --config.data.data_dir=D (or "
                        "--config.data.tokenizer=<dir with tokenizer.json>)")
    return tokenizer_lib.load_tokenizer(path)


def special_ids(tokenizer) -> dict:
    """The tokenizer's special token ids under JanusConfig field names."""
    return dict(tokenizer_lib.special_token_ids(tokenizer))


def model_config_for(config, tokenizer=None):
    """JanusConfig from config.model, with vocab/special ids taken from the tokenizer and the
    execution options (scan, remat, compute dtype) from config.model_options."""
    mc = janus.config_from_configdict(config.model)
    opts = config.get("model_options", {})
    text_kw = {k: opts[k] for k in ("scan_layers", "remat_policy") if k in opts}
    if tokenizer is not None:
        ids = special_ids(tokenizer)
        vocab = max(mc.text.vocab_size, len(tokenizer))
        mc = mc.replace(**ids)
        text_kw["vocab_size"] = vocab
    if text_kw:
        mc = mc.replace(text=dataclasses.replace(mc.text, **text_kw))
    return mc


def generation_accuracy(params, mc, tokenizer, num_prompts: int, seed: int, options,
                        batch_size: int = 16, reasoning: str = "none") -> dict:
    """GenEval-style accuracy (pixel-only evaluator) of images sampled for held-out prompts.

    Returns {'accuracy', 'score', 'images' uint8 [n, H, W, 3]}.
    """
    metas = heldout_metadata(num_prompts, seed, "test", mc.vq.image_size)
    correct, scores, images = [], [], []
    key = jax.random.PRNGKey(seed)
    for i in range(0, num_prompts, batch_size):
        chunk = metas[i:i + batch_size]
        ids, mask = tokenize_prompts(tokenizer, mc, [m["prompt"] for m in chunk], bucket=1)
        key, sub = jax.random.split(key)
        rollout = sample(params, mc, jnp.asarray(ids), jnp.asarray(mask), sub, options)
        pixels = np.asarray(janus.vq_decode(params, mc, rollout.image_ids_bn))
        imgs = np.clip(np.round((pixels + 1.0) * 127.5), 0, 255).astype(np.uint8)
        for img, m in zip(imgs, chunk):
            s = geneval.score(img, m)
            correct.append(bool(s["correct"]))
            scores.append(float(s.get("score", float(s["correct"]))))
            images.append(img)
    return {"accuracy": float(np.mean(correct)), "score": float(np.mean(scores)),
            "images": np.stack(images)}


def sample_options(config) -> SampleOptions:
    """The eval's sampling options (config.eval; the unconditional branch hides what prompt
    dropout hid in training)."""
    ec = config.eval
    return SampleOptions(max_think_tokens=int(ec.max_think_tokens),
                         cfg_weight=float(ec.cfg_weight), greedy=bool(ec.greedy),
                         image_temperature=float(ec.image_temperature),
                         temperature=float(ec.temperature),
                         uncond_hides=str(config.data.dropout_hides))


def init_model_params(mc, rng, vq_params=None, generation_embeddings: str = "random"):
    """Random init with the trained VQ tokenizer's weights. generation_embeddings='codebook'
    starts the image-input embeddings at the VQ codebook (janus.codebook_embeddings), so codes
    that decode to similar patches are similar inputs from step 0."""
    if generation_embeddings not in GENERATION_EMBEDDING_INITS:
        raise UserError(f"unknown init_generation_embeddings {generation_embeddings!r}; use one "
                        f"of {GENERATION_EMBEDDING_INITS}")
    params = janus.init_params(mc, rng)
    if vq_params is not None:
        params = dict(params)
        params["vqmodel"] = jax.tree.map(jnp.asarray, vq_params)
        if generation_embeddings == "codebook":
            params["generation_embeddings"] = {"embedding": janus.codebook_embeddings(params)}
    elif generation_embeddings == "codebook":
        raise UserError("init_generation_embeddings='codebook' needs the trained VQ tokenizer; "
                        "set --config.data.vq_params")
    return params


def checkpoint_init_fn(path, mc, vq_params, fresh_parts=(), fresh_init_fn=None):
    """Start from a jaxgen checkpoint (e.g. the judge from the SFT'd policy, as Janus-Pro-R1's
    self-evaluation does) instead of a random init; its shapes must equal this config's except in
    `fresh_parts` (top-level parameter groups, e.g. 'vision_model', taken from fresh_init_fn)."""
    params, ckpt_mc, _ = ckpt_lib.load_checkpoint(path)
    # the checkpoint's layers stacked (or not) as this run scans them
    params, ckpt_mc = janus.with_execution_options(params, ckpt_mc,
                                                   scan_layers=mc.text.scan_layers)
    want = jax.eval_shape(lambda r: janus.init_params(mc, r), jax.random.PRNGKey(0))
    unknown = sorted(set(fresh_parts) - set(want))
    if unknown:
        raise UserError(f"init_fresh_parts names {unknown}, which this model does not have; "
                        f"choose from {sorted(want)}")

    def shapes(tree):
        return jax.tree.map(lambda x: x.shape, {k: v for k, v in tree.items()
                                                if k not in fresh_parts})
    if shapes(want) != shapes(params):
        raise UserError(f"init_checkpoint {path} has other parameter shapes than this config "
                        f"(checkpoint model: {ckpt_mc}); use a checkpoint of the same model config,"
                        " or list the differing parts in --config.init_fresh_parts")
    params = dict(params)
    params["vqmodel"] = vq_params

    def init(rng):
        out = dict(params)
        if fresh_parts:
            fresh = fresh_init_fn(rng)
            out.update({k: fresh[k] for k in fresh_parts})
        return jax.tree.map(jnp.asarray, out)
    return init


def with_pretrained_tower(init_fn, config, mc, workdir):
    """init_fn with the vision tower replaced by one pretrained on patch labels of the training
    records (jaxgen/train/vision_pretrain.py), computed once per workdir and kept in
    <workdir>/vision_pretrain.msgpack so a resumed run does not train it again."""
    path = pathlib.Path(workdir) / VISION_PRETRAIN_FILE
    template = jax.eval_shape(init_fn, jax.random.PRNGKey(0))["vision_model"]
    if path.exists():
        tower = flax.serialization.from_bytes(template, path.read_bytes())
    else:
        dc, pc = config.data, config.vision_pretrain
        records = load_records(config, "train", int(dc.num_examples), int(dc.seed))
        settings = vp.PretrainSettings(steps=int(pc.steps), batch_size=int(pc.batch_size),
                                       learning_rate=float(pc.learning_rate),
                                       seed=int(config.seed))
        tower, metrics = vp.pretrain_tower(mc, records, settings,
                                           init_fn(jax.random.PRNGKey(int(config.seed)))
                                           ["vision_model"])
        print(f"vision pretrain: {metrics}")
        if jax.process_index() == 0:
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(flax.serialization.to_bytes(jax.device_get(tower)))
            tmp.replace(path)  # atomic: a crash leaves no half-written tower

    def init(rng):
        return {**init_fn(rng), "vision_model": jax.tree.map(jnp.asarray, tower)}
    return init


def train(config, workdir) -> dict:
    """Train (or resume) SFT in `workdir`. Returns {'metrics', 'checkpoint' (jaxgen checkpoint
    dir for sampling), 'step', 'status', 'accuracy' (when config.eval.num_prompts > 0)}."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dc = config.data
    # a real model's tokenizer and VQ come with its checkpoint (`jaxgen convert hf-to-jax`)
    init_ckpt = config.get("init_checkpoint", "")
    tokenizer = load_tokenizer(dc.tokenizer or dc.data_dir or init_ckpt)
    mc = model_config_for(config, tokenizer)
    vq_path = dc.get("vq_params", "")
    if vq_path:
        vq_params = vq_lib.load_params(vq_path)
    elif init_ckpt:
        vq_params = ckpt_lib.load_checkpoint(init_ckpt)[0]["vqmodel"]
        vq_path = str(pathlib.Path(init_ckpt) / ckpt_lib.PARAMS_FILE)  # (the cache key)
    else:
        raise UserError("config.data.vq_params is empty; train the tokenizer first "
                        "(`jaxgen train vq --workdir V`) and pass "
                        f"--config.data.vq_params=V/{vq_lib.VQ_PARAMS_FILE}, or start from a "
                        "model that has one (--config.init_checkpoint=DIR)")
    data = cached_dataset(config, workdir, tokenizer, mc, vq_params, vq_path)

    mesh, layout = parallel.mesh_from_config(config.mesh)
    parallel.check_batch_divides(int(config.batch_size), mesh)
    opt = optim.make_optimizer(config)
    init_fn = lambda r: init_model_params(  # noqa: E731
        mc, r, vq_params, str(config.get("init_generation_embeddings", "random")))
    if config.get("init_checkpoint"):
        init_fn = checkpoint_init_fn(config.init_checkpoint, mc, vq_params,
                                     tuple(config.get("init_fresh_parts", ())), init_fn)
    if int(config.get("vision_pretrain", {}).get("steps", 0)) > 0:
        init_fn = with_pretrained_tower(init_fn, config, mc, workdir)
    state, shardings = state_lib.init_state(
        init_fn, opt, jax.random.PRNGKey(int(config.seed)), mesh, layout,
        janus.param_logical_axes(mc))
    capacities = head_capacities([data["generation"], data["understanding"]])
    step_fn = state_lib.make_train_step(
        make_loss_fn(mc, config, capacities), opt, shardings, mesh,
        accum_steps=int(config.grad_accum_steps), compute_dtype_name=config.compute_dtype,
        learning_rate_fn=optim.make_schedule(config.optim, int(config.total_steps)),
        layout=layout)
    batcher = MixedBatcher(data, int(config.batch_size), dc.task_mix, int(dc.seed),
                           mc.vision.image_size)
    tokens_per_batch = int(config.batch_size) * int(dc.seq_len)

    def eval_fn(st, step):
        ec = config.eval
        if int(ec.num_prompts) <= 0:
            return {}
        res = generation_accuracy(parallel.to_host(st.params), mc, tokenizer,
                                  int(ec.num_prompts), int(ec.seed), sample_options(config),
                                  int(ec.batch_size))
        save_image_grid(workdir / "samples" / f"sft_step{step:06d}.png",
                        res["images"][:int(config.sample_grid)])
        return {"accuracy": res["accuracy"], "score": res["score"]}

    loop_cfg = loop_lib.LoopConfig.from_config(config, tokens_per_batch=tokens_per_batch,
                                               desc="sft")
    result = loop_lib.run(workdir=workdir, state=state, shardings=shardings, train_step=step_fn,
                          data=batcher, mesh=mesh, loop=loop_cfg, config=config,
                          eval_fn=eval_fn)
    out = {"metrics": result["metrics"], "step": result["step"], "status": result["status"]}
    if result["status"] == "done":
        out["checkpoint"] = str(export_checkpoint(workdir / "final", result["state"].params, mc,
                                                  tokenizer, init_ckpt or None))
    if "eval_accuracy" in result["metrics"]:
        out["accuracy"] = result["metrics"]["eval_accuracy"]
    return out


def export_checkpoint(path, params, mc, tokenizer, processor_from=None):
    """A jaxgen checkpoint dir (config.json + params.safetensors + tokenizer) for sampling, with
    the processor files of `processor_from` (the checkpoint the run started from), if any.

    Every process calls it (the sharded params are gathered); process 0 writes."""
    ckpt_lib.export_from_mesh(
        "sft-export", lambda p: ckpt_lib.save_checkpoint(path, p, mc, tokenizer, processor_from),
        params)
    return pathlib.Path(path)

