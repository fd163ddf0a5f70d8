"""Public API: load a model, generate images (optionally reasoning first), save and export.

    gen = jaxgen.load("path/to/hf_janus_dir_or_jaxgen_checkpoint")
    samples = gen.generate(["a red circle left of a blue square"], think=True, seed=0)
    samples[0].image  # uint8 [H, W, 3]

The facade over `jaxgen.convert.load.load_model` (jaxgen checkpoints, whose format lives in
`jaxgen.checkpoint`, and Hugging Face Janus directories), `jaxgen.sampling.generate` and
`jaxgen.convert.hf.export_hf_dir`.
"""

from __future__ import annotations

import pathlib

from jaxgen.checkpoint import load_checkpoint, save_checkpoint
from jaxgen.convert.hf import export_hf_dir
from jaxgen.convert.load import load_model
from jaxgen.errors import PromptTooLongError
from jaxgen.models.config import JanusConfig
from jaxgen.sampling import generate as generate_lib
from jaxgen.sampling.generate import Sample


def load(path, **import_options) -> "Generator":
    """Load a jaxgen checkpoint or a Hugging Face Janus directory as a Generator.

    import_options (Hugging Face directories only) go to `jaxgen.convert.hf.import_hf_dir`,
    e.g. scan_layers=True, dtype='bfloat16'.
    """
    return Generator(*load_model(path, **import_options))


class Generator:
    """A loaded model: params pytree, JanusConfig and tokenizer (or None)."""

    def __init__(self, params, config: JanusConfig, tokenizer=None):
        self.params = params
        self.config = config
        self.tokenizer = tokenizer

    def generate(self, prompts=None, input_ids=None, attention_mask=None, **options):
        """Generate images (optionally reasoning first) -> list of Sample; the options are
        `jaxgen.sampling.generate.generate`'s (cfg_weight, temperature, greedy, num_samples,
        think, max_think_tokens, seed, top_k, top_p, image_temperature, uncond_hides,
        return_rollout)."""
        return generate_lib.generate(self.params, self.config, self.tokenizer, prompts,
                                     input_ids, attention_mask, **options)

    def save(self, ckpt_dir) -> pathlib.Path:
        """Write a jaxgen checkpoint directory (config.json, params.safetensors, tokenizer)."""
        return save_checkpoint(ckpt_dir, self.params, self.config, self.tokenizer)

    def export_hf(self, out_dir) -> pathlib.Path:
        """Write a Hugging Face Janus directory (loadable by JanusForConditionalGeneration)."""
        export_hf_dir(self.params, self.config, str(out_dir), tokenizer=self.tokenizer)
        return pathlib.Path(out_dir)


__all__ = ["Generator", "Sample", "load", "save_checkpoint", "load_checkpoint",
           "PromptTooLongError"]
