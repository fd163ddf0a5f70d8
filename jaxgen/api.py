"""Public API: load a model, generate images (optionally reasoning first), save and export.

    gen = jaxgen.load("path/to/hf_janus_dir_or_jaxgen_checkpoint")
    samples = gen.generate(["a red circle left of a blue square"], think=True, seed=0)
    samples[0].image  # uint8 [H, W, 3]

A jaxgen checkpoint directory holds `config.json` (JanusConfig.to_dict()), `params.safetensors`
(the params pytree flattened with '/'-joined keys) and the tokenizer files (`tokenizer.json`, ...).
A Hugging Face Janus directory (config.json with model_type 'janus' + weights) is converted on load
by `jaxgen.convert.hf.import_hf_dir`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.concurrent_batches import map_batches, split_batches
from jaxgen.data.templates import generation_prompt
from jaxgen.errors import CheckpointError, PromptTooLongError, UserError
from jaxgen.models import janus
from jaxgen.models.config import JanusConfig
from jaxgen.sampling.sampler import SampleOptions, check_context, context_length, sample

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"
TOKENIZER_FILE = "tokenizer.json"
KEY_SEP = "/"
# Prompts are left padded up to a multiple of this many tokens so that nearby prompt lengths
# share one compiled sampler.
PROMPT_LENGTH_BUCKET = 16
# Reasoning budget when think=True and no max_think_tokens is given (capped by the context).
DEFAULT_MAX_THINK_TOKENS = 256


@dataclasses.dataclass
class Sample:
    """One generated image and what led to it."""
    prompt: Optional[str]  # the user's prompt (or the decoded input ids; None without tokenizer)
    reasoning: str  # the chain of thought ('' when think=False or no tokenizer)
    image_tokens: np.ndarray  # int32 [N], row-major VQ grid
    image: np.ndarray  # uint8 [H, W, 3]


# ---------------------------------------------------------------------------------------------
# Checkpoints.

def _flatten(tree, prefix=()):
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            if KEY_SEP in str(k):
                raise UserError(f"parameter key {k!r} contains {KEY_SEP!r}; rename it to save")
            out.update(_flatten(v, prefix + (str(k),)))
        return out
    return {KEY_SEP.join(prefix): tree}


def _unflatten(flat):
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        parts = key.split(KEY_SEP)
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def save_checkpoint(ckpt_dir, params, config: JanusConfig, tokenizer=None) -> pathlib.Path:
    """Write config.json, params.safetensors and (if given) the tokenizer files into ckpt_dir."""
    import safetensors.numpy

    out = pathlib.Path(ckpt_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
    flat = {k: np.ascontiguousarray(np.asarray(jax.device_get(v)))
            for k, v in _flatten(params).items()}
    safetensors.numpy.save_file(flat, str(out / PARAMS_FILE))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


def _check_params(params, config: JanusConfig, where: pathlib.Path):
    """Raise CheckpointError if params do not have the names and shapes `config` implies."""
    expected = _flatten(jax.eval_shape(lambda r: janus.init_params(config, r), jax.random.PRNGKey(0)))
    got = _flatten(params)
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [f"{k}: {tuple(got[k].shape)} vs {tuple(expected[k].shape)}"
             for k in sorted(set(got) & set(expected)) if tuple(got[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches (checkpoint vs config, e.g. {wrong[:3]})")
    if problems:
        raise CheckpointError(
            f"{where / PARAMS_FILE} does not match {where / CONFIG_FILE}: " + "; ".join(problems)
            + ". Re-save the checkpoint with the config it was trained with.")


def _load_tokenizer(path: pathlib.Path):
    if not (path / TOKENIZER_FILE).exists():
        return None
    from jaxgen.data.tokenizer import load_tokenizer
    return load_tokenizer(str(path))


def load_checkpoint(ckpt_dir):
    """Read a jaxgen checkpoint directory -> (params, config, tokenizer or None)."""
    import safetensors.numpy

    path = pathlib.Path(ckpt_dir)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist; pass the directory "
                              f"written by `jaxgen convert hf-to-jax` or Generator.save")
    missing = [f for f in (CONFIG_FILE, PARAMS_FILE) if not (path / f).exists()]
    if missing:
        raise CheckpointError(f"{path} is not a jaxgen checkpoint: {missing} missing (expected "
                              f"{CONFIG_FILE} + {PARAMS_FILE} + tokenizer files)")
    try:
        config = JanusConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
    except (json.JSONDecodeError, UserError, TypeError) as e:
        raise CheckpointError(f"{path / CONFIG_FILE} is not a valid jaxgen model config: {e}") from None
    flat = safetensors.numpy.load_file(str(path / PARAMS_FILE))
    params = jax.tree_util.tree_map(jnp.asarray, _unflatten(flat))
    _check_params(params, config, path)
    return params, config, _load_tokenizer(path)


def _hf_model_type(path: pathlib.Path) -> Optional[str]:
    try:
        return json.loads((path / CONFIG_FILE).read_text()).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def load(path, **import_options) -> "Generator":
    """Load a jaxgen checkpoint or a Hugging Face Janus directory as a Generator.

    import_options (Hugging Face directories only) go to `jaxgen.convert.hf.import_hf_dir`,
    e.g. scan_layers=True, dtype='bfloat16'.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise CheckpointError(f"model path {path} does not exist; pass a jaxgen checkpoint "
                              f"directory or a Hugging Face Janus directory")
    if not path.is_dir():
        raise CheckpointError(f"model path {path} is a file; pass the directory that holds it")
    if (path / PARAMS_FILE).exists():
        if import_options:
            raise UserError(f"{sorted(import_options)} only apply when importing a Hugging Face "
                            f"directory; {path} is a jaxgen checkpoint (its config.json decides)")
        return Generator(*load_checkpoint(path))
    model_type = _hf_model_type(path)
    if model_type == "janus":
        from jaxgen.convert.hf import import_hf_dir
        return Generator(*import_hf_dir(str(path), **import_options))
    if model_type is not None:
        raise CheckpointError(f"{path} holds a Hugging Face {model_type!r} model, not Janus "
                              f"(model_type 'janus'); jaxgen loads Janus-Pro models only")
    raise CheckpointError(f"{path} is not a model directory: expected {CONFIG_FILE} + "
                          f"{PARAMS_FILE} (jaxgen checkpoint) or a Hugging Face Janus directory")


# ---------------------------------------------------------------------------------------------
# Generation.

def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _left_pad(rows: Sequence[Sequence[int]], masks: Sequence[Sequence[bool]], length: int, pad_id: int):
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, (row, m) in enumerate(zip(rows, masks)):
        if len(row):
            ids[i, length - len(row):] = row
            mask[i, length - len(row):] = m
    return ids, mask


def pixels_to_uint8(pixels) -> np.ndarray:
    """Decoder output in [-1, 1] -> uint8, as Hugging Face post-processes: (x + 1) 127.5, clipped."""
    return np.clip((np.asarray(pixels, np.float32) + 1.0) * 127.5, 0, 255).astype(np.uint8)


_vq_decode_jit = jax.jit(janus.vq_decode, static_argnums=1)


class Generator:
    """A loaded model: params pytree, JanusConfig and tokenizer (or None)."""

    def __init__(self, params, config: JanusConfig, tokenizer=None):
        self.params = params
        self.config = config
        self.tokenizer = tokenizer

    # -- inputs -----------------------------------------------------------------------------
    def _tokenize(self, prompts):
        if self.tokenizer is None:
            raise UserError("this model has no tokenizer; pass input_ids (and attention_mask) "
                            "instead of prompt strings, or load a directory with tokenizer.json")
        bos = self.tokenizer.bos_token or ""
        rows = [self.tokenizer(generation_prompt(p, bos), add_special_tokens=False)["input_ids"]
                for p in prompts]
        return rows, [[True] * len(r) for r in rows]

    def _rows(self, prompts, input_ids, attention_mask):
        if (prompts is None) == (input_ids is None):
            raise UserError("pass exactly one of prompts (strings) or input_ids")
        if prompts is not None:
            prompts = [prompts] if isinstance(prompts, str) else list(prompts)
            if not prompts:
                raise UserError("prompts is empty; pass at least one prompt string")
            rows, masks = self._tokenize(prompts)
            return prompts, rows, masks
        ids = np.asarray(input_ids)
        if ids.ndim == 1:
            ids = ids[None]
        mask = np.ones_like(ids, bool) if attention_mask is None else np.asarray(attention_mask, bool)
        if mask.ndim == 1:
            mask = mask[None]
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise UserError(f"input_ids must be [batch, length] with a matching attention_mask; got "
                            f"{ids.shape} and {mask.shape}")
        if not mask[:, -1].all():
            raise UserError("input_ids must be left padded: every row's last attention_mask entry "
                            "must be 1")
        # Drop the caller's left padding; it is re-added up to the length bucket.
        rows = [ids[i, np.argmax(mask[i]):].tolist() for i in range(len(ids))]
        masks = [mask[i, np.argmax(mask[i]):].tolist() for i in range(len(ids))]
        texts = ([self.tokenizer.decode(r, skip_special_tokens=True) for r in rows]
                 if self.tokenizer is not None else [None] * len(rows))
        return texts, rows, masks

    def _think_budget(self, think, max_think_tokens, prompt_len):
        if not think:
            return 0
        if max_think_tokens is not None:
            if max_think_tokens < 1:
                raise UserError(f"think=True needs max_think_tokens >= 1, got {max_think_tokens}")
            return int(max_think_tokens)
        room = self.config.text.max_position_embeddings - context_length(self.config, prompt_len, 0)
        return max(min(DEFAULT_MAX_THINK_TOKENS, room), 1)

    # -- generation -------------------------------------------------------------------------
    def generate(self, prompts=None, input_ids=None, attention_mask=None, cfg_weight: float = 5.0,
                 temperature: float = 1.0, greedy: bool = False, num_samples: int = 1,
                 think: bool = False, max_think_tokens: Optional[int] = None, seed: int = 0, *,
                 top_k: int = 0, top_p: float = 1.0, image_temperature: Optional[float] = None,
                 uncond_hides: str = "prompt", return_rollout: bool = False):
        """Generate num_samples images per prompt (prompt-major order) -> list of Sample.

        prompts: a string or list of strings (templated, tokenised, left padded), or
        input_ids / attention_mask: pre-tokenised prompts ending with '<|Assistant|>:'.
        think: write a chain of thought (at most max_think_tokens; default: as many as fit, up to
        DEFAULT_MAX_THINK_TOKENS) before <begin_of_image>. temperature applies to reasoning and,
        unless image_temperature is given, to image tokens. return_rollout: also return the
        sampler's Rollout (as `(samples, rollout)`).
        """
        if num_samples < 1:
            raise UserError(f"num_samples must be >= 1, got {num_samples}")
        texts, rows, masks = self._rows(prompts, input_ids, attention_mask)
        longest = max(len(r) for r in rows)
        budget = self._think_budget(think, max_think_tokens, longest)
        check_context(self.config, longest, budget)
        room = self.config.text.max_position_embeddings - context_length(self.config, 0, budget)
        length = max(longest, min(_round_up(longest, PROMPT_LENGTH_BUCKET), room))
        ids, mask = _left_pad(rows, masks, length, self.config.pad_token_id)
        ids, mask = np.repeat(ids, num_samples, 0), np.repeat(mask, num_samples, 0)
        texts = [t for t in texts for _ in range(num_samples)]
        options = SampleOptions(
            max_think_tokens=budget, temperature=temperature, top_k=top_k, top_p=top_p,
            greedy=greedy, cfg_weight=cfg_weight, uncond_hides=uncond_hides,
            image_temperature=temperature if image_temperature is None else image_temperature)
        rollout = sample(self.params, self.config, ids, mask, jax.random.PRNGKey(seed), options)
        image_ids = np.asarray(rollout.image_ids_bn, np.int32)
        images = map_batches(  # on a CPU, one piece of the batch per core (one-core convolutions)
            lambda ids: pixels_to_uint8(_vq_decode_jit(self.params, self.config, ids)),
            image_ids, split_batches(len(image_ids)))
        think_ids = np.asarray(rollout.think_ids_bt)
        think_mask = np.asarray(rollout.think_mask_bt, bool)
        samples = []
        for i in range(len(texts)):
            reasoning = ""
            if self.tokenizer is not None and think_mask[i].any():
                reasoning = self.tokenizer.decode(think_ids[i][think_mask[i]].tolist(),
                                                  skip_special_tokens=False)
            samples.append(Sample(prompt=texts[i], reasoning=reasoning, image_tokens=image_ids[i],
                                  image=images[i]))
        return (samples, rollout) if return_rollout else samples

    # -- saving -----------------------------------------------------------------------------
    def save(self, ckpt_dir) -> pathlib.Path:
        """Write a jaxgen checkpoint directory (config.json, params.safetensors, tokenizer)."""
        return save_checkpoint(ckpt_dir, self.params, self.config, self.tokenizer)

    def export_hf(self, out_dir) -> pathlib.Path:
        """Write a Hugging Face Janus directory (loadable by JanusForConditionalGeneration)."""
        from jaxgen.convert.hf import export_hf_dir
        export_hf_dir(self.params, self.config, str(out_dir), tokenizer=self.tokenizer)
        return pathlib.Path(out_dir)


__all__ = ["Generator", "Sample", "load", "save_checkpoint", "load_checkpoint", "PromptTooLongError"]
