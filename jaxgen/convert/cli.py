"""`jaxgen convert hf-to-jax` / `jaxgen convert jax-to-hf`: weights between Hugging Face and jaxgen."""

from __future__ import annotations


def hf_to_jax_args(parser):
    parser.add_argument("--hf-dir", required=True, help="Hugging Face Janus directory")
    parser.add_argument("--out", required=True, help="jaxgen checkpoint directory to write")


def hf_to_jax(args) -> int:
    from jaxgen.checkpoint import save_checkpoint
    from jaxgen.convert.load import load_model
    from jaxgen.errors import CheckpointError

    import pathlib
    hf_dir = pathlib.Path(args.hf_dir)
    if not (hf_dir / "config.json").exists():
        raise CheckpointError(f"{hf_dir} is not a Hugging Face model directory (no config.json); "
                              f"pass the directory written by save_pretrained")
    params, config, tokenizer = load_model(hf_dir)
    out = save_checkpoint(args.out, params, config, tokenizer)
    print(f"wrote jaxgen checkpoint {out} (tokenizer: {'yes' if tokenizer else 'no'})")
    return 0


def jax_to_hf_args(parser):
    parser.add_argument("--ckpt", required=True, help="jaxgen checkpoint directory")
    parser.add_argument("--out", required=True, help="Hugging Face directory to write")


def jax_to_hf(args) -> int:
    from jaxgen.checkpoint import load_checkpoint
    from jaxgen.convert.hf import export_hf_dir

    params, config, tokenizer = load_checkpoint(args.ckpt)
    out = export_hf_dir(params, config, args.out, tokenizer=tokenizer)
    print(f"wrote Hugging Face Janus directory {out}")
    return 0
