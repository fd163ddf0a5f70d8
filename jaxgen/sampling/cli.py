"""`jaxgen sample`: generate images (optionally reasoning first) from a checkpoint.

Writes into --out: one PNG per sample (`sample_{prompt:03d}_{k:02d}.png`), `grid.png` (one row per
prompt, one column per sample) and `samples.jsonl` (prompt, reasoning, image token ids, file).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

GRID_FILE = "grid.png"
JSONL_FILE = "samples.jsonl"


def sample_args(parser):
    parser.add_argument("--ckpt", required=True,
                        help="jaxgen checkpoint directory or Hugging Face Janus directory")
    parser.add_argument("--prompt", action="append", required=True,
                        help="text prompt (repeat the flag for several prompts)")
    parser.add_argument("--num-samples", type=int, default=1, help="images per prompt")
    parser.add_argument("--cfg-weight", type=float, default=5.0,
                        help="classifier-free guidance weight (1 disables guidance)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--greedy", action="store_true", help="argmax decoding")
    parser.add_argument("--think", action="store_true",
                        help="write a chain of thought before the image")
    parser.add_argument("--max-think-tokens", type=int, default=None,
                        help="reasoning budget with --think (default: as many as fit, up to 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decoder", choices=("tokens", "flow"), default="tokens",
                        help="draw with image tokens, or with the flow decoder of a checkpoint "
                             "written by `jaxgen train flow` / `flow_grpo` (the diffusion path)")
    parser.add_argument("--flow-steps", type=int, default=20,
                        help="Euler steps of the flow decoder's ODE (--decoder flow)")
    parser.add_argument("--out", required=True, help="output directory")


def image_grid(images, rows: int, cols: int) -> np.ndarray:
    """Tile equally sized uint8 [H, W, 3] images row-major into one [rows*H, cols*W, 3] image."""
    h, w, c = images[0].shape
    grid = np.zeros((rows * h, cols * w, c), np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        grid[r * h:(r + 1) * h, k * w:(k + 1) * w] = img
    return grid


def sample(args) -> int:
    from PIL import Image

    from jaxgen.api import load
    from jaxgen.errors import UserError

    if args.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.decoder == "flow":
        samples = _flow_samples(args)
    else:
        gen = load(args.ckpt)
        samples = gen.generate(prompts=args.prompt, num_samples=args.num_samples,
                               cfg_weight=args.cfg_weight, temperature=args.temperature,
                               greedy=args.greedy, think=args.think,
                               max_think_tokens=args.max_think_tokens, seed=args.seed)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / JSONL_FILE, "w") as f:
        for i, s in enumerate(samples):
            p, k = divmod(i, args.num_samples)
            name = f"sample_{p:03d}_{k:02d}.png"
            Image.fromarray(s.image).save(out / name)
            f.write(json.dumps({"prompt": args.prompt[p], "sample": k, "file": name,
                                "reasoning": s.reasoning,
                                "image_tokens": s.image_tokens.tolist()}) + "\n")
    grid = image_grid([s.image for s in samples], len(args.prompt), args.num_samples)
    Image.fromarray(grid).save(out / GRID_FILE)
    print(f"wrote {len(samples)} images, {GRID_FILE} and {JSONL_FILE} to {out}")
    return 0


def _flow_samples(args) -> list:
    """Reasoning (with --think) by the LLM, then the flow decoder's ODE: Sample per image."""
    import jax

    from jaxgen.checkpoint import load_flow_checkpoint
    from jaxgen.errors import UserError
    from jaxgen.sampling import flow_generate
    from jaxgen.sampling import generate as generate_lib
    from jaxgen.data.tokenizer import detokenize_reasoning, tokenize_prompts

    if args.greedy:
        raise UserError("--greedy applies to image tokens; the flow decoder's ODE is already "
                        "deterministic given the seed (drop --greedy)")
    jp, jc, tok, fp, fc = load_flow_checkpoint(args.ckpt)
    if tok is None:
        raise UserError(f"{args.ckpt} has no tokenizer files; the flow path needs them")
    think = (args.max_think_tokens or generate_lib.DEFAULT_MAX_THINK_TOKENS) if args.think else 0
    texts = [p for p in args.prompt for _ in range(args.num_samples)]
    ids, mask = tokenize_prompts(tok, jc, texts)
    options = flow_generate.FlowSampleOptions(max_think_tokens=think, temperature=args.temperature,
                                              cfg_weight=args.cfg_weight, num_steps=args.flow_steps)
    out = flow_generate.generate(jp, jc, fp, fc, ids, mask, jax.random.PRNGKey(args.seed), options)
    images = generate_lib.pixels_to_uint8(flow_generate.decode_pixels(jp, jc, out))
    reasoning = detokenize_reasoning(tok, out.think_ids_bt, out.think_mask_bt)
    codes = np.asarray(out.codes_bn)
    return [generate_lib.Sample(prompt=t, reasoning=r, image_tokens=c, image=im)
            for t, r, c, im in zip(texts, reasoning, codes, images)]
