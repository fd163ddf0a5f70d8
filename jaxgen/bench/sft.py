"""`jaxgen bench sft`: SFT training-step throughput, jaxgen vs a PyTorch eager step, same model.

Builds a random Hugging Face JanusForConditionalGeneration from a jaxgen model config (default
`configs/janus.py:shapes`), imports it with `jaxgen.convert.hf.import_hf_dir` (same weights),
and times one full training step on the same batch of reasoning-then-image sequences
(prompt/text tokens then image codes): forward through generation embeddings + aligner, the
Llama decoder, lm_head and generation_head; the weighted cross-entropy of the SFT trainer
(text 2.0, image 1.0); backward; AdamW update.
  - PyTorch: eager, torch.optim.AdamW; float32 on a CPU, bfloat16 autocast on a GPU; both heads
    at every position (what `model(...)` computes), the loss masked afterwards.
  - jaxgen: `jaxgen.train.state.make_train_step` (jit, donated state) with the SFT trainer's
    loss, which evaluates each head only at its own target positions
    (sft_loss.head_capacities) and runs causal attention without a mask on these unpadded rows.
Prints tokens/s of both and the ratio, and jaxgen's achieved FLOP/s (XLA cost analysis of the
compiled step / step time) as a fraction of this machine's measured matmul peak. On a GPU both
sides run there with bfloat16 compute and float32 master weights (PyTorch: autocast), and it
reports model FLOPs utilisation (model_flops: 6 x matmul parameters x the positions they are
applied at + 12 x layers x heads x head_dim x sequence per token; PaLM's convention, no credit
for recomputation) against the chip's dense bfloat16 peak (goal >= 50% for janus:1b).

    jaxgen bench sft                      # CPU, ~1-2 minutes
    jaxgen bench sft --batch 8 --text-len 96 --config.model.text.num_hidden_layers=8
    jaxgen bench sft --model-config janus:1b --batch 8   # GPU (H100: ~3 minutes)
    jaxgen bench sft --model-config janus:1b --batch 32 --torch-batch 8   # PyTorch OOMs at 16
Goal on CPU: ratio >= 2x.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pathlib
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from jaxgen import parallel
from jaxgen.bench import require_torch
from jaxgen.bench.sample import hf_model
from jaxgen.config import load_config
from jaxgen.convert.hf import hf_compatible, import_hf_dir
from jaxgen.errors import UserError
from jaxgen.models.janus import config_from_configdict, param_logical_axes
from jaxgen.train import optim, sft_loss, state as st
from jaxgen.train.sft_rows import KIND_BOI, KIND_IMAGE, KIND_NONE, KIND_TEXT


def sft_args(parser):
    parser.add_argument("--model-config", default="janus:shapes",
                        help="jaxgen model config (configs/<family>.py:<arg>); --config.model.* "
                             "overrides apply")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-len", type=int, default=48,
                        help="text tokens (prompt + reasoning) before <begin_of_image>")
    parser.add_argument("--torch-batch", type=int, default=None,
                        help="PyTorch's batch when it differs (tokens/s are compared); 0 skips "
                             "PyTorch (default: --batch)")
    parser.add_argument("--accum", type=int, default=1,
                        help="jaxgen gradient-accumulation micro-batches per step (--batch is "
                             "the whole step's batch)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per implementation")
    parser.add_argument("--seed", type=int, default=0)


def synthetic_batch(config, batch, text_len, seed):
    """Host arrays for both implementations: a text part then the image codes."""
    rng = np.random.default_rng(seed)
    n = config.num_image_tokens
    length = text_len + 1 + n  # text, <begin_of_image>, codes (last code is the final target)
    high = min(config.boi_token_id, config.image_token_id, config.pad_token_id)
    toks = rng.integers(0, high, (batch, length)).astype(np.int32)
    toks[:, 0] = config.bos_token_id
    toks[:, text_len] = config.boi_token_id
    is_img = np.zeros((batch, length), bool)
    is_img[:, text_len + 1:] = True
    toks[is_img] = rng.integers(0, config.vq.num_embeddings, is_img.sum())
    kind = np.full((batch, length), KIND_TEXT, np.int8)
    kind[:, :text_len // 2] = KIND_NONE  # the prompt half carries no loss
    kind[:, text_len] = KIND_BOI
    kind[is_img] = KIND_IMAGE
    return {"inputs": toks[:, :-1], "input_is_image": is_img[:, :-1], "targets": toks[:, 1:],
            "target_is_image": is_img[:, 1:], "target_kind": kind[:, 1:],
            "region": np.zeros((batch, length - 1), np.int8),
            "valid": np.ones((batch, length - 1), bool)}


def _torch_step_fn(model, batch, lr, device="cpu"):
    """One eager AdamW step; on CUDA under bfloat16 autocast (float32 master weights)."""
    import torch
    weights = {1: 2.0, 3: 1.0}  # text, image (KIND_TEXT, KIND_IMAGE); boi 0
    on = lambda a, dtype=None: torch.tensor(a, dtype=dtype, device=device)
    inputs, targets = on(batch["inputs"], torch.long), on(batch["targets"], torch.long)
    in_img, t_img = on(batch["input_is_image"]), on(batch["target_is_image"])
    kind = on(batch["target_kind"].astype(np.int64))
    w = torch.zeros(kind.shape, device=device)
    for k, v in weights.items():
        w[kind == k] = v
    inner = model.model
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)

    autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device == "cuda"
                else contextlib.nullcontext)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = _forward_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    def _forward_loss():
        text_emb = inner.get_input_embeddings()(torch.where(in_img, 0, inputs))
        img_emb = model.prepare_embeddings_for_image_generation(torch.where(in_img, inputs, 0))
        emb = torch.where(in_img[..., None], img_emb, text_emb)
        hidden = inner.language_model(inputs_embeds=emb).last_hidden_state
        text_lp = torch.log_softmax(model.lm_head(hidden).float(), -1)
        img_lp = torch.log_softmax(inner.generation_head(hidden).float(), -1)
        nll_t = -text_lp.gather(-1, torch.where(t_img, 0, targets)[..., None])[..., 0]
        nll_i = -img_lp.gather(-1, torch.where(t_img, targets, 0)[..., None])[..., 0]
        nll = torch.where(t_img, nll_i, nll_t)
        return (nll * w).sum() / w.sum()

    return step


# Dense bfloat16 peak FLOP/s by device kind (vendor data sheets; SXM parts, no sparsity).
SPEC_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12,
                  "TPU v5 lite": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12}


def spec_peak_flops(device_kind: str) -> float | None:
    return next((v for k, v in SPEC_BF16_PEAK.items() if k.lower() in device_kind.lower()), None)


def model_flops(config, batch: int, seq_len: int, capacities: dict | None = None) -> float:
    """Training FLOPs of one SFT step on [batch, seq_len] tokens (PaLM's convention):
    6 x matmul params x the positions they are applied at + 12 x L x (heads x hd) x S per token.

    The decoder layers and the generation aligner run at every position; lm_head and the
    generation head at `capacities['text' / 'image']` positions per row (sft_loss.head_capacities;
    None: every position). Embedding lookups cost none.
    """
    t, vq = config.text, config.vq
    d, attn = t.hidden_size, t.num_attention_heads * t.head_dim
    kv = t.num_key_value_heads * t.head_dim
    per_layer = 2 * d * attn + 2 * d * kv + 3 * d * t.intermediate_size
    aligner = vq.embed_dim * vq.projection_dim + (vq.num_hidden_layers - 1) * vq.projection_dim ** 2
    text_head = d * t.vocab_size
    image_head = d * vq.image_token_embed_dim + vq.image_token_embed_dim * vq.num_embeddings
    caps = capacities or {"text": seq_len, "image": seq_len}
    tokens = batch * seq_len
    matmul = ((t.num_hidden_layers * per_layer + aligner) * tokens +
              text_head * batch * caps["text"] + image_head * batch * caps["image"])
    return 6.0 * matmul + 12.0 * t.num_hidden_layers * attn * seq_len * tokens


def step_config(lr: float):
    """The SFT trainer's optimizer, data and loss config for the benchmark step."""
    return ml_collections.ConfigDict(dict(
        optim=dict(learning_rate=lr, warmup_steps=0, schedule="constant", b1=0.9, b2=0.95,
                   weight_decay=0.05, grad_clip_norm=1.0,
                   # never reached by a generation step (PyTorch's AdamW skips them: no grad)
                   frozen=("vqmodel", "vision_model", "aligner")),
        data=dict(prompt_dropout=0.0, dropout_hides="prompt"),
        loss=dict(text_weight=2.0, image_weight=1.0, boi_weight=0.0, eoi_weight=0.0,
                  answer_weight=1.0)))


def matmul_peak_flops(dtype_name: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    """Best observed FLOP/s of an n x n matmul on the default device."""
    dtype = jnp.dtype(dtype_name)
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def sft(args) -> int:
    # PyTorch runs first on the same GPU: keep JAX from reserving most of its memory when its
    # backend starts (read then, not at import).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
    torch = require_torch()
    torch_batch = args.batch if args.torch_batch is None else args.torch_batch
    if min(args.batch, args.text_len, args.repeats, args.accum) < 1 or torch_batch < 0:
        raise UserError("--batch, --text-len, --accum and --repeats must be >= 1 "
                        "(--torch-batch >= 0)")
    if args.batch % args.accum:
        raise UserError(f"--batch {args.batch} must be a multiple of --accum {args.accum}")
    on_gpu = jax.default_backend() == "gpu"
    config = hf_compatible(config_from_configdict(load_config(args.model_config,
                                                              args.config_overrides)))
    torch_device = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
    model = hf_model(config, args.seed).train()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(pathlib.Path(tmp), safe_serialization=True)
        t = config.text  # the requested execution options (scan, remat, dtype, attention)
        params, jconfig, _ = import_hf_dir(tmp, scan_layers=t.scan_layers,
                                           remat_policy=t.remat_policy, dtype=t.dtype,
                                           attention_impl=t.attention_impl)
    batch = synthetic_batch(config, args.batch, args.text_len, args.seed)
    tokens = batch["inputs"].size
    lr = 1e-4
    print(f"model: {config.text.num_hidden_layers} layers x {config.text.hidden_size}, "
          f"{config.num_image_tokens} image tokens; batch {args.batch} x {batch['inputs'].shape[1]}"
          f" tokens (PyTorch: {f'batch {torch_batch}' if torch_batch else 'skipped'}); "
          f"torch threads {torch.get_num_threads()}, jax devices {jax.devices()}")
    progress = tqdm(total=(args.repeats + 1) * (2 if torch_batch else 1), desc="bench sft",
                    unit="step")

    torch_times, torch_tokens = [], 0
    if torch_batch:
        tb = synthetic_batch(config, torch_batch, args.text_len, args.seed)
        torch_tokens = tb["inputs"].size
        torch_step = _torch_step_fn(model.to(torch_device), tb, lr, torch_device)
        torch_step()
        progress.update()
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            torch_step()
            torch_times.append(time.perf_counter() - t0)
            progress.update()
        del torch_step  # free the GPU for JAX (the optimizer's hooks hold a cycle)
    del model
    if torch_device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()

    cfg = step_config(lr)
    opt = optim.make_optimizer(cfg, total_steps=100)
    mesh = parallel.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    state, sh = st.shard_state(st.create_state(params, opt, jax.random.PRNGKey(0)), mesh, "fsdp",
                               param_logical_axes(jconfig))
    capacities = sft_loss.head_capacities([batch])
    step = st.make_train_step(sft_loss.make_loss_fn(jconfig, cfg, capacities), opt, sh, mesh,
                              accum_steps=args.accum,
                              compute_dtype_name="bfloat16" if on_gpu else None)
    dev_batch = parallel.shard_batch(batch, mesh)
    compiled = step.lower(state, dev_batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float((cost or {}).get("flops", 0.0))
    mem = compiled.memory_analysis()
    if mem is not None:
        gib = 2.0 ** 30
        progress.write(f"jaxgen step memory: arguments {mem.argument_size_in_bytes / gib:.2f} "
                       f"GiB, temporaries {mem.temp_size_in_bytes / gib:.2f} GiB")
    t0 = time.perf_counter()
    state, m = step(state, dev_batch)
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    progress.update()
    jax_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        state, m = step(state, dev_batch)
        jax.block_until_ready(m)
        jax_times.append(time.perf_counter() - t0)
        progress.update()
    progress.close()

    t_jax = statistics.median(jax_times)
    peak = (matmul_peak_flops("bfloat16", n=8192) if on_gpu
            else matmul_peak_flops("float32"))
    if torch_times:
        t_torch = statistics.median(torch_times)
        print(f"pytorch eager : {torch_tokens / t_torch:10.0f} tokens/s  ({t_torch * 1e3:.1f} "
              f"ms/step, batch {torch_batch})")
    print(f"jaxgen jit    : {tokens / t_jax:10.0f} tokens/s  ({t_jax * 1e3:.1f} ms/step, batch "
          f"{args.batch}" + (f" in {args.accum} micro-batches" if args.accum > 1 else "") +
          f"; first call incl. compile {first:.1f} s)")
    if torch_times:
        print(f"ratio jaxgen / pytorch (tokens/s): {tokens / t_jax / (torch_tokens / t_torch):.2f}x"
              "  (goal >= 2x on CPU)")
    if not on_gpu:
        what = "XLA cost analysis"
        if args.accum > 1:  # XLA counts a loop body once: count the model FLOPs instead
            flops, what = model_flops(jconfig, *batch["inputs"].shape, capacities), "model FLOPs"
        achieved = flops / t_jax if flops else 0.0
        print(f"jaxgen step: {flops / 1e9:.2f} GFLOP ({what}), achieved "
              f"{achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.1%} of the measured matmul peak "
              f"{peak / 1e9:.1f} GFLOP/s")
    else:  # XLA's cost analysis does not count the cuBLAS / cuDNN calls: count model FLOPs
        kind = jax.devices()[0].device_kind
        spec = spec_peak_flops(kind)
        model_rate = model_flops(jconfig, *batch["inputs"].shape, capacities) / t_jax
        print(f"model FLOPs: {model_rate / 1e12:.1f} TFLOP/s on {kind}; utilisation "
              f"{model_rate / peak:.1%} of the measured bf16 matmul peak {peak / 1e12:.0f} "
              "TFLOP/s" + (f", MFU {model_rate / spec:.1%} of the {spec / 1e12:.0f} TFLOP/s "
                           "data-sheet peak (goal >= 50% for janus:1b)" if spec else ""))
    return 0
