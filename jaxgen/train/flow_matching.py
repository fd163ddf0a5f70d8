"""Flow-matching training of the diffusion path (MetaQuery-style), on a frozen unified model.

    records (prompt, reasoning, image) -> text [prompt; reasoning; <boi>] + VQ codes of the image
    loss = || v_theta(x_t, t, context(text)) - (eps - x0) ||^2,  x_t = (1 - t) x0 + t eps,
           x0 = the image's codebook latents (jaxgen.models.flow), t ~ logit-normal (SD3) or
           uniform; the text is hidden (only BOS and <boi> kept) for `loss.cond_dropout` of the
           rows so classifier-free guidance has an unconditional velocity to subtract.

The query tokens, connector and DiT train; the LLM is frozen unless `train_llm` (MetaQuery keeps
the MLLM frozen so the reasoning it writes is untouched), and the VQ always is. Parameters are
{**the Janus params, 'flow': flow params} so the shared loop (jaxgen.train.loop) gives sharding,
exact resume, SIGTERM and NaN handling as for SFT. The result, `<workdir>/final`, is the unified
model's checkpoint directory plus flow_config.json and flow.safetensors (read back by
`jaxgen.checkpoint.load_flow_checkpoint`).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import parallel
from jaxgen.checkpoint import export_from_mesh, load_checkpoint, save_flow_checkpoint
from jaxgen.data import templates
from jaxgen.data.images import images_to_codes, resize_images
from jaxgen.data.pipeline import make_loader
from jaxgen.data.tokenizer import detokenize_reasoning, tokenize_prompts
from jaxgen.errors import CheckpointError, PromptTooLongError, UserError
from jaxgen.eval import geneval
from jaxgen.models import flow, janus
from jaxgen.sampling import flow_generate
from jaxgen.sampling.generate import pixels_to_uint8
from jaxgen.train import loop as loop_lib
from jaxgen.train import optim
from jaxgen.train import state as state_lib
from jaxgen.train.metrics import save_image_grid
from jaxgen.train.sft_data import RowSource, heldout_metadata, load_records
from jaxgen.train.sft_rows import encode_text, reasoning_text

TIMESTEP_SAMPLING = ("logit_normal", "uniform")


# ---------------------------------------------------------------------------------- data

def text_row(tokenizer, jc, prompt: str, reasoning: str, text_len: int):
    """[prompt; reasoning; <boi>] ids left-padded to text_len: (ids int32 [L], mask bool [L])."""
    toks = encode_text(tokenizer, templates.generation_prompt(prompt, tokenizer.bos_token))
    toks += (encode_text(tokenizer, reasoning) if reasoning else []) + [jc.boi_token_id]
    if len(toks) > text_len:
        raise PromptTooLongError(f"prompt + reasoning of {prompt!r} is {len(toks)} tokens, more "
                                 f"than data.text_len={text_len}; raise --config.data.text_len")
    ids = np.full((text_len,), jc.pad_token_id, np.int32)
    mask = np.zeros((text_len,), bool)
    ids[text_len - len(toks):] = toks
    mask[text_len - len(toks):] = True
    return ids, mask


def build_dataset(config, tokenizer, jc, janus_params) -> dict:
    """{'ids' [n, L], 'mask' [n, L], 'codes' [n, h*w]} from the SFT records of config.data."""
    dc = config.data
    records = load_records(config, "train", int(dc.num_examples), int(dc.seed))
    rows = [text_row(tokenizer, jc, r["prompt"], reasoning_text(r, dc.reasoning),
                     int(dc.text_len)) for r in records]
    images = resize_images(np.stack([np.asarray(r["image"], np.uint8) for r in records]),
                           jc.vq.image_size)
    encode = jax.jit(lambda x: janus.vq_encode(janus_params, jc, x))
    ids, mask = np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
    # text_len is a bound: keep only the columns the longest row needs (rounded up to 8), so
    # the LLM does not run over padding every step
    width = min(int(dc.text_len), -(-int(mask.sum(1).max()) // 8) * 8)
    return {"ids": ids[:, -width:], "mask": mask[:, -width:],
            "codes": images_to_codes(encode, images)}


# ---------------------------------------------------------------------------------- loss

def sample_timesteps(rng, batch: int, how: str, mean: float = 0.0, std: float = 1.0):
    """t [B] in (0, 1): 'logit_normal' (SD3: sigmoid of N(mean, std)) or 'uniform'."""
    if how == "logit_normal":
        return jax.nn.sigmoid(mean + std * jax.random.normal(rng, (batch,)))
    if how == "uniform":
        return jax.random.uniform(rng, (batch,), minval=1e-5, maxval=1.0 - 1e-5)
    raise UserError(f"unknown loss.timesteps {how!r}; choose one of {TIMESTEP_SAMPLING}")


def flow_matching_loss(janus_params, jc, flow_params, fc, batch, rng, *, cond_dropout: float,
                       timesteps: str = "logit_normal", logit_mean: float = 0.0,
                       logit_std: float = 1.0):
    """Per-row mean squared velocity error [B] (see the module docstring)."""
    ids, mask, codes = batch["ids"], batch["mask"], batch["codes"]
    b = ids.shape[0]
    k_drop, k_t, k_eps = jax.random.split(rng, 3)
    drop = jax.random.bernoulli(k_drop, cond_dropout, (b,))
    ids = jnp.where(drop[:, None], flow_generate.unconditional_prefix(jc, ids), ids)
    ctx = flow.condition(janus_params, jc, flow_params, fc, ids, mask)
    x0 = flow.codes_to_latents(janus_params, jc, codes)
    t = sample_timesteps(k_t, b, timesteps, logit_mean, logit_std)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    t4 = t[:, None, None, None]
    v = flow.velocity(flow_params, fc, jc, (1.0 - t4) * x0 + t4 * eps, t, ctx)
    return jnp.mean(jnp.square(v - (eps - x0)), axis=(1, 2, 3))


def frozen_keys(janus_params, train_llm: bool) -> tuple:
    """Top-level Janus parameter groups that do not train."""
    return tuple(k for k in janus_params if not (train_llm and k == "language_model"))


def make_loss_fn(jc, fc, config, frozen: tuple):
    lc = config.loss
    if lc.timesteps not in TIMESTEP_SAMPLING:
        raise UserError(f"unknown loss.timesteps {lc.timesteps!r}; choose one of "
                        f"{TIMESTEP_SAMPLING}")

    def loss_fn(params, batch, rng):
        # frozen groups: no weight gradients computed (the optimizer leaves them alone anyway)
        params = {k: jax.lax.stop_gradient(v) if k in frozen else v for k, v in params.items()}
        flow_params = params["flow"]
        per_row = flow_matching_loss(params, jc, flow_params, fc, batch, rng,
                                     cond_dropout=float(lc.cond_dropout), timesteps=lc.timesteps,
                                     logit_mean=float(lc.logit_mean), logit_std=float(lc.logit_std))
        num = jnp.sum(per_row)
        den = jnp.float32(per_row.shape[0])
        return num, {"denominator": den, "metrics": {"loss": (num, den)}}

    return loss_fn


# ---------------------------------------------------------------------------------- eval

def flow_accuracy(janus_params, jc, flow_params, fc, tokenizer, num_prompts: int, seed: int,
                  options: flow_generate.FlowSampleOptions, batch_size: int = 16,
                  split: str = "test") -> dict:
    """GenEval-style accuracy (pixel-only evaluator) of flow-decoded images for ShapesWorld
    prompts of `split`. Returns {'accuracy', 'images' uint8 [n, H, W, 3], 'reasoning'}."""
    metas = heldout_metadata(num_prompts, seed, split, jc.vq.image_size)
    key = jax.random.PRNGKey(seed)
    correct, images, reasoning = [], [], []
    for i in range(0, num_prompts, batch_size):
        chunk = metas[i:i + batch_size]
        ids, mask = tokenize_prompts(tokenizer, jc, [m["prompt"] for m in chunk])
        key, sub = jax.random.split(key)
        out = flow_generate.generate(janus_params, jc, flow_params, fc, ids, mask, sub, options)
        pixels = flow_generate.decode_pixels(janus_params, jc, out, snap=options.snap)
        imgs = pixels_to_uint8(pixels)
        reasoning += detokenize_reasoning(tokenizer, out.think_ids_bt, out.think_mask_bt)
        for img, m in zip(imgs, chunk):
            correct.append(geneval.satisfies(img, m))
            images.append(img)
    return {"accuracy": float(np.mean(correct)), "images": np.stack(images),
            "reasoning": reasoning}


def sample_options(config) -> flow_generate.FlowSampleOptions:
    s = config.sampling
    return flow_generate.FlowSampleOptions(
        max_think_tokens=int(s.max_think_tokens), temperature=float(s.temperature),
        cfg_weight=float(s.cfg_weight), num_steps=int(s.num_steps), shift=float(s.shift),
        noise_level=float(s.get("noise_level", 0.0)), snap=bool(s.get("snap", True)))


# --------------------------------------------------------------------------------- train

def train(config, workdir) -> dict:
    """Train (or resume) the flow decoder in `workdir` on top of config.policy (a jaxgen
    checkpoint dir: the unified model, its tokenizer and VQ). Returns {'metrics', 'step',
    'status', 'checkpoint' (when done), 'accuracy' (when config.eval.num_prompts > 0)}."""
    workdir = pathlib.Path(workdir)
    if not config.get("policy"):
        raise UserError("config.policy is empty: pass the unified model to build on, e.g. "
                        "--config.policy=<demo workdir>/sft/final (a jaxgen checkpoint dir)")
    janus_params, jc, tokenizer = load_checkpoint(config.policy)
    if tokenizer is None:
        raise CheckpointError(f"{config.policy} has no tokenizer files; the flow trainer "
                              "tokenises prompts with the policy's tokenizer")
    fc = flow.FlowConfig.from_dict(config.flow)
    workdir.mkdir(parents=True, exist_ok=True)
    data = build_dataset(config, tokenizer, jc, janus_params)

    mesh, layout = parallel.mesh_from_config(config.mesh)
    parallel.check_batch_divides(int(config.batch_size), mesh)
    frozen = frozen_keys(janus_params, bool(config.train_llm))
    opt = optim.make_optimizer(config, frozen=frozen)

    def init_fn(rng):
        return {**jax.tree.map(jnp.asarray, janus_params),
                "flow": flow.init_flow_params(fc, jc, rng)}

    axes = {**janus.param_logical_axes(jc), "flow": flow.param_logical_axes(fc, jc)}
    state, shardings = state_lib.init_state(init_fn, opt, jax.random.PRNGKey(int(config.seed)),
                                            mesh, layout, axes)
    step_fn = state_lib.make_train_step(
        make_loss_fn(jc, fc, config, frozen), opt, shardings, mesh,
        accum_steps=int(config.get("grad_accum_steps", 1)),
        compute_dtype_name=config.get("compute_dtype", "float32"),
        learning_rate_fn=optim.make_schedule(config.optim, int(config.total_steps)),
        layout=layout)
    loader = iter(make_loader(RowSource(data), batch_size=int(config.batch_size),
                              seed=int(config.data.seed)))

    def split(params):
        return ({k: v for k, v in params.items() if k != "flow"}, params["flow"])

    def eval_fn(st, step):
        ec = config.eval
        if int(ec.num_prompts) <= 0:
            return {}
        jp, fp = split(parallel.to_host(st.params))
        res = flow_accuracy(jp, jc, fp, fc, tokenizer, int(ec.num_prompts), int(ec.seed),
                            sample_options(config), int(ec.batch_size))
        save_image_grid(workdir / "samples" / f"flow_step{step:06d}.png",
                        res["images"][:int(config.get("sample_grid", 16))])
        return {"accuracy": res["accuracy"]}

    loop_cfg = loop_lib.LoopConfig.from_config(config, desc="flow")
    result = loop_lib.run(workdir=workdir, state=state, shardings=shardings, train_step=step_fn,
                          data=loader, mesh=mesh, loop=loop_cfg, config=config, eval_fn=eval_fn)
    out = {"metrics": result["metrics"], "step": result["step"], "status": result["status"]}
    if result["status"] == "done":
        final = workdir / "final"
        export_from_mesh("flow-export",
                         lambda jp, fp: save_flow_checkpoint(final, jp, jc, tokenizer, fp, fc),
                         *split(result["state"].params))
        out["checkpoint"] = str(final)
    if "eval_accuracy" in result["metrics"]:
        out["accuracy"] = result["metrics"]["eval_accuracy"]
    return out
