"""`jaxgen convert hf-to-jax` / `jaxgen convert jax-to-hf`: weights between Hugging Face and jaxgen."""

from __future__ import annotations


def hf_to_jax_args(parser):
    parser.add_argument("--hf-dir", required=True, help="Hugging Face Janus directory")
    parser.add_argument("--out", required=True, help="jaxgen checkpoint directory to write")


def hf_to_jax(args) -> int:
    from jaxgen.checkpoint import copy_processor_files, save_checkpoint
    from jaxgen.convert.load import load_model
    from jaxgen.errors import CheckpointError

    import pathlib
    hf_dir = pathlib.Path(args.hf_dir)
    if not (hf_dir / "config.json").exists():
        raise CheckpointError(f"{hf_dir} is not a Hugging Face model directory (no config.json); "
                              f"pass the directory written by save_pretrained")
    params, config, tokenizer = load_model(hf_dir)
    out = save_checkpoint(args.out, params, config, tokenizer)
    kept = copy_processor_files(hf_dir, out)  # written back by jax-to-hf
    print(f"wrote jaxgen checkpoint {out} (tokenizer: {'yes' if tokenizer else 'no'}; "
          f"processor files: {', '.join(kept) or 'none'})")
    return 0


# Where an export keeps a flow decoder (jaxgen's format), beside the Hugging Face files.
FLOW_DIR = "jaxgen_flow_decoder"


def jax_to_hf_args(parser):
    parser.add_argument("--ckpt", required=True, help="jaxgen checkpoint directory")
    parser.add_argument("--out", required=True, help="Hugging Face directory to write")


def jax_to_hf(args) -> int:
    import pathlib
    import shutil

    from jaxgen.checkpoint import FLOW_CONFIG_FILE, FLOW_PARAMS_FILE, load_checkpoint
    from jaxgen.convert.hf import export_hf_dir

    params, config, tokenizer = load_checkpoint(args.ckpt)
    out = export_hf_dir(params, config, args.out, tokenizer=tokenizer, processor_from=args.ckpt)
    ckpt = pathlib.Path(args.ckpt)
    if (ckpt / FLOW_PARAMS_FILE).exists():  # no transformers equivalent: kept beside, as is
        flow_dir = pathlib.Path(out) / FLOW_DIR
        flow_dir.mkdir(parents=True, exist_ok=True)
        for name in (FLOW_CONFIG_FILE, FLOW_PARAMS_FILE):
            shutil.copyfile(ckpt / name, flow_dir / name)
        print(f"the flow decoder has no transformers equivalent: wrote it beside the model in "
              f"{flow_dir} (jaxgen's {FLOW_CONFIG_FILE} + {FLOW_PARAMS_FILE})")
    print(f"wrote Hugging Face Janus directory {out}")
    return 0
