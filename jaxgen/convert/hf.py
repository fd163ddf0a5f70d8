"""Hugging Face `JanusForConditionalGeneration` directories <-> jaxgen (params, JanusConfig).

    import_hf_dir(path, scan_layers=False, remat_policy='none', dtype='float32',
                  param_dtype='float32', attention_impl='xla')
        -> (params, JanusConfig, tokenizer or None)
    export_hf_dir(params, config, path, tokenizer=None) -> pathlib.Path
    hf_config_to_jaxgen(hf_config_dict, special_ids=None, **text_options) -> JanusConfig
    jaxgen_config_to_hf(config) -> dict                    (a valid transformers JanusConfig dict)
    params_from_hf_tensors(tensors, config) -> params      (full HF names, e.g. 'lm_head.weight')
    params_to_hf_tensors(params, config) -> dict[str, np.ndarray]

Only safetensors are read or written (never pickle). Tensor rules: Linear weight [out, in] <->
Dense kernel [in, out]; norm weight <-> scale; Embedding weight <-> embedding; decoder layer i
<-> 'layers_{i}' (or row i of the stacked 'layers' tree when config.text.scan_layers). The vision
tower and VQ model are delegated to jaxgen/convert/hf_vision_vq.py.

Special ids: HF's config.json only holds image_token_id; bos/eos/pad/boi/eoi come from
generation_config.json (generation_kwargs.boi_token_id, which HF's image `generate` needs, and
generation_kwargs.eoi_token_id, which jaxgen's export adds), then
the tokenizer ('<begin_of_image>', '<end_of_image>', '<image_placeholder>' and its bos/eos/pad),
then text_config; anything still unknown keeps the jaxgen default.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Dict, Mapping, Optional

import flax.linen as nn
from flax.traverse_util import flatten_dict, unflatten_dict
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.checkpoint.files import load_flat, save_tree
from jaxgen.convert import hf_vision_vq
from jaxgen.convert.hf_processor import write_processor
from jaxgen.errors import CheckpointError, UserError
from jaxgen.models import janus
from jaxgen.models.config import ConfigError, JanusConfig, LlamaConfig, VisionConfig, VQConfig

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")

VISION_PREFIX = "model.vision_model."
VQ_PREFIX = "model.vqmodel."

# Token strings the Janus-Pro tokenizer uses for the special ids config.json does not carry.
SPECIAL_TOKEN_STRINGS = {
    "boi_token_id": "<begin_of_image>",
    "eoi_token_id": "<end_of_image>",
    "image_token_id": "<image_placeholder>",
}

# Keys every transformers config may carry; they do not change the weights.
GENERIC_HF_KEYS = {
    "_name_or_path", "architectures", "chunk_size_feed_forward", "dtype", "torch_dtype",
    "id2label", "label2id", "is_encoder_decoder", "model_type", "output_attentions",
    "output_hidden_states", "problem_type", "return_dict", "transformers_version",
    "initializer_range", "use_cache", "_attn_implementation_autoset", "tie_word_embeddings",
    # transformers 4.x wrote these base/generation attributes into (sub-)configs as well.
    "add_cross_attention", "bad_words_ids", "begin_suppress_tokens", "cross_attention_hidden_size",
    "decoder_start_token_id", "diversity_penalty", "do_sample", "early_stopping",
    "encoder_no_repeat_ngram_size", "exponential_decay_length_penalty", "finetuning_task",
    "forced_bos_token_id", "forced_eos_token_id", "is_decoder", "length_penalty", "max_length",
    "min_length", "no_repeat_ngram_size", "num_beam_groups", "num_beams", "num_return_sequences",
    "output_scores", "prefix", "pruned_heads", "remove_invalid_values", "repetition_penalty",
    "return_dict_in_generate", "sep_token_id", "suppress_tokens", "task_specific_params",
    "temperature", "tf_legacy_loss", "tie_encoder_decoder", "tokenizer_class", "top_k", "top_p",
    "torchscript", "typical_p", "use_bfloat16", "_name_or_path",
}

# HF key -> jaxgen field (same name unless given), per sub-config.
TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
             "max_position_embeddings")
VISION_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_channels",
               "image_size", "patch_size", "mlp_ratio", "layer_norm_eps", "attention_bias",
               "use_qk_norm", "projection_dim", "depth")
VQ_KEYS = ("embed_dim", "num_embeddings", "double_latent", "latent_channels", "in_channels",
           "base_channels", "channel_multiplier", "num_res_blocks", "out_channels",
           "projection_dim", "num_hidden_layers", "image_token_embed_dim")

# Keys read but not copied: value checks (must equal what jaxgen computes) or ignorable ones.
TEXT_CHECKED = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False}
TEXT_IGNORED = {"attention_dropout", "pretraining_tp", "bos_token_id", "eos_token_id",
                "pad_token_id", "rope_theta", "rope_parameters", "rope_scaling"}
VISION_CHECKED = {"hidden_act": "gelu"}
VISION_IGNORED = {"attention_dropout", "hidden_dropout_rate", "projection_dropout",
                  "num_image_tokens"}
VQ_CHECKED = {"hidden_act": "gelu"}
VQ_IGNORED = {"dropout", "num_patches"}
TOP_IGNORED = {"text_config", "vision_config", "vq_config", "image_token_id", "image_token_index",
               "pad_token_id", "bos_token_id", "eos_token_id"}


# ---------------------------------------------------------------------------------------------
# Configs.

def _check_keys(d: Mapping, copied, checked: Mapping, ignored, where: str):
    known = set(copied) | set(checked) | set(ignored) | GENERIC_HF_KEYS
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {unknown} in {where} of config.json; jaxgen cannot tell whether "
            f"they change the model. Known keys: {sorted(known)}. Remove them if they are harmless.")
    for key, want in checked.items():
        if key in d and d[key] != want:
            raise ConfigError(f"{where}.{key} = {d[key]!r} is not supported (jaxgen implements "
                              f"{want!r}); this checkpoint cannot be converted.")


def _rope_theta(text: Mapping) -> float:
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"text_config rope type {rope_type!r} is not supported; jaxgen "
                          "implements the default RoPE only.")
    return float(rope.get("rope_theta", text.get("rope_theta", LlamaConfig.rope_theta)))


def hf_config_to_jaxgen(hf: Mapping[str, Any], special_ids: Optional[Mapping[str, int]] = None,
                        **text_options) -> JanusConfig:
    """transformers JanusConfig dict (config.json) -> JanusConfig.

    special_ids: bos/eos/pad/boi/eoi/image ids found elsewhere (generation config, tokenizer);
    they win over config.json. text_options: execution options for LlamaConfig (scan_layers,
    remat_policy, dtype, param_dtype, attention_impl)."""
    hf = dict(hf)
    if hf.get("model_type", "janus") != "janus":
        raise ConfigError(f"config.json has model_type {hf.get('model_type')!r}; expected 'janus' "
                          "(a JanusForConditionalGeneration checkpoint such as Janus-Pro-1B/7B).")
    _check_keys(hf, (), {}, TOP_IGNORED, "the top level")
    text = dict(hf.get("text_config") or {})
    vision = dict(hf.get("vision_config") or {})
    vq = dict(hf.get("vq_config") or {})
    _check_keys(text, TEXT_KEYS, TEXT_CHECKED, TEXT_IGNORED, "text_config")
    _check_keys(vision, VISION_KEYS, VISION_CHECKED, VISION_IGNORED, "vision_config")
    _check_keys(vq, VQ_KEYS, VQ_CHECKED, VQ_IGNORED, "vq_config")

    text_kw = {k: text[k] for k in TEXT_KEYS if text.get(k) is not None}
    text_kw["rope_theta"] = _rope_theta(text)
    heads = text_kw.get("num_attention_heads", LlamaConfig.num_attention_heads)
    text_kw.setdefault("num_key_value_heads", heads)
    text_kw.setdefault("head_dim", text_kw.get("hidden_size", LlamaConfig.hidden_size) // heads)
    text_cfg = LlamaConfig.from_dict({**text_kw, **text_options})

    vision_kw = {k: vision[k] for k in VISION_KEYS if k in vision}
    for k in ("image_size", "patch_size"):
        if isinstance(vision_kw.get(k), (list, tuple)):
            vision_kw[k] = vision_kw[k][0]
    vision_cfg = VisionConfig.from_dict(vision_kw)

    vq_kw = {k: vq[k] for k in VQ_KEYS if k in vq}
    vq_cfg = VQConfig.from_dict(vq_kw)
    # HF decodes a (vision grid) x (vision grid) latent: image side = grid * VQ downsample.
    grid = vision_cfg.image_size // vision_cfg.patch_size
    vq_cfg = VQConfig.from_dict({**vq_kw, "image_size": grid * vq_cfg.downsample})

    ids = {}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = text.get(key, hf.get(key))
        if isinstance(value, int):
            ids[key] = value
    image_id = hf.get("image_token_id", hf.get("image_token_index"))
    if image_id is not None:
        ids["image_token_id"] = int(image_id)
    ids.update({k: int(v) for k, v in (special_ids or {}).items() if v is not None})
    return JanusConfig(text=text_cfg, vision=vision_cfg, vq=vq_cfg, **ids)


def hf_compatible(config: JanusConfig) -> JanusConfig:
    """The same model with the jaxgen-only options set to what Hugging Face Janus runs (SigLIP
    understanding input with its patch embedding, self-attention in the VQ encoder), e.g. to benchmark the transformer
    of a ShapesWorld config against transformers."""
    return config.replace(understanding_input="siglip",
                          vision=dataclasses.replace(config.vision, stem="patch"),
                          vq=dataclasses.replace(config.vq, encoder_attention=True))


def jaxgen_config_to_hf(config: JanusConfig) -> dict:
    """JanusConfig -> transformers JanusConfig dict (what export writes to config.json)."""
    t, v, q = config.text, config.vision, config.vq
    if config.understanding_input != "siglip":
        raise ConfigError(
            f"this model reads images for understanding as {config.understanding_input!r}, "
            "which Hugging Face Janus cannot express (it always uses the SigLIP tower); keep it "
            "as a jaxgen checkpoint (Generator.save) instead of exporting it")
    if v.stem != "patch":
        raise ConfigError(
            f"vision.stem={v.stem!r} (a convolutional stem) has no Hugging Face SigLIP "
            "equivalent (one patch-embedding convolution); keep the model as a jaxgen checkpoint "
            "instead of exporting it")
    if not config.vq.encoder_attention:
        raise ConfigError(
            "vq.encoder_attention=False (a convolution-only VQ encoder) has no Hugging Face "
            "JanusVQVAE equivalent; keep the model as a jaxgen checkpoint instead of exporting it")
    grid = v.image_size // v.patch_size
    if grid != q.grid:
        raise ConfigError(
            f"Hugging Face Janus decodes a vision-grid x vision-grid latent ({grid}x{grid} from "
            f"vision.image_size/patch_size) but this config's VQ grid is {q.grid}x{q.grid}; make "
            "vq.image_size / downsample equal vision.image_size / vision.patch_size to export.")
    return {
        "architectures": ["JanusForConditionalGeneration"],
        "model_type": "janus",
        "image_token_id": config.image_token_id,
        "tie_word_embeddings": False,
        "dtype": t.param_dtype,
        "text_config": {
            "model_type": "llama", **{k: getattr(t, k) for k in TEXT_KEYS},
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta},
            "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
            "pad_token_id": config.pad_token_id, "tie_word_embeddings": False,
        },
        "vision_config": {
            "model_type": "janus_vision_model", **{k: getattr(v, k) for k in VISION_KEYS},
            "hidden_act": "gelu", "num_image_tokens": v.num_image_tokens,
        },
        "vq_config": {
            "model_type": "janus_vqgan",
            **{k: (list(getattr(q, k)) if k == "channel_multiplier" else getattr(q, k))
               for k in VQ_KEYS},
            "hidden_act": "gelu", "num_patches": q.grid,
        },
    }


def generation_config_dict(config: JanusConfig) -> dict:
    """generation_config.json so that HF `generate(..., generation_mode='image')` works."""
    return {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        # HF reads boi_token_id; eoi is kept here too so a directory without tokenizer round-trips.
        "generation_kwargs": {"boi_token_id": config.boi_token_id,
                              "eoi_token_id": config.eoi_token_id},
        "guidance_scale": 5.0,
    }


# ---------------------------------------------------------------------------------------------
# Tensors of the parts this file owns (everything except vision_model and vqmodel).

_OWN_PARTS = ("language_model", "lm_head", "aligner", "generation_embeddings",
              "generation_aligner", "generation_head")
_LEAF_TO_HF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def _hf_part(part: str) -> str:
    """'layers_3' -> 'layers.3', 'hidden_layers_0' -> 'hidden_layers.0'."""
    head, _, tail = part.rpartition("_")
    if head in ("layers", "hidden_layers") and tail.isdigit():
        return f"{head}.{tail}"
    return part


def _hf_name(path) -> str:
    top, *modules, leaf = path
    prefix = "lm_head" if top == "lm_head" else f"model.{top}"
    return ".".join([prefix, *(_hf_part(m) for m in modules), _LEAF_TO_HF[leaf]])


def _is_linear_kernel(path, ndim) -> bool:
    return path[-1] == "kernel" and ndim == 2


def _unrolled_text(config: JanusConfig) -> JanusConfig:
    return config.replace(text=dataclasses.replace(config.text, scan_layers=False,
                                                   remat_policy="none"))


def _own_expected_shapes(config: JanusConfig) -> Dict[tuple, tuple]:
    """jaxgen path (unrolled layers) -> jaxgen shape, for the parts owned here."""
    cfg = _unrolled_text(config)

    def init(rng):
        return {k: janus.init_part(k, cfg, rng) for k in _OWN_PARTS}

    shapes = nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))
    return {path: tuple(x.shape) for path, x in flatten_dict(shapes).items()}


def _hf_shape(path, shape):
    return tuple(reversed(shape)) if _is_linear_kernel(path, len(shape)) else tuple(shape)


def _split_prefix(tensors: Mapping[str, Any], prefix: str):
    inside = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    return inside, {k: v for k, v in tensors.items() if not k.startswith(prefix)}


def params_from_hf_tensors(tensors: Mapping[str, Any], config: JanusConfig,
                           tie_word_embeddings: bool = False) -> dict:
    """Full HF state dict (names as in model.safetensors) -> jaxgen params (numpy leaves)."""

    vision_t, rest = _split_prefix(tensors, VISION_PREFIX)
    vq_t, rest = _split_prefix(rest, VQ_PREFIX)
    expected = _own_expected_shapes(config)
    by_hf = {_hf_name(path): path for path in expected}
    if "lm_head.weight" not in rest and tie_word_embeddings:
        rest = {**rest, "lm_head.weight": rest.get("model.language_model.embed_tokens.weight")}
    missing = sorted(set(by_hf) - {k for k, v in rest.items() if v is not None})
    if missing:
        raise CheckpointError(f"checkpoint is missing tensor(s) {missing}; it does not match "
                              "config.json (or is incomplete: check every shard was downloaded).")
    unexpected = sorted(set(rest) - set(by_hf))
    if unexpected:
        raise CheckpointError(f"checkpoint has unexpected tensor(s) {unexpected}; it does not "
                              "match config.json (check the model sizes there).")
    flat = hf_vision_vq.checked_arrays(
        rest, by_hf, expected, _hf_shape,
        lambda path, x: x.T if _is_linear_kernel(path, x.ndim) else x, "language model")
    params = unflatten_dict(flat)
    if config.text.scan_layers:
        params["language_model"] = janus.stack_layers(params["language_model"],
                                                 config.text.num_hidden_layers)
    params["vision_model"] = hf_vision_vq.vision_from_hf(vision_t, config.vision)
    params["vqmodel"] = hf_vision_vq.vq_from_hf(vq_t, config.vq)
    return params


def params_to_hf_tensors(params, config: JanusConfig) -> Dict[str, np.ndarray]:
    """jaxgen params -> full HF state dict (numpy arrays, HF names and layouts)."""

    if config.image_position_embeddings:
        raise UserError("this model has image_position_embeddings, which Hugging Face Janus does "
                        "not have; export a model trained without them")
    params = jax.tree_util.tree_map(np.asarray, params)
    own = {k: params[k] for k in _OWN_PARTS}
    if config.text.scan_layers:
        own["language_model"] = janus.unstack_layers(own["language_model"],
                                                config.text.num_hidden_layers)
    expected = _own_expected_shapes(config)
    flat = flatten_dict(own)
    missing = sorted("/".join(p) for p in set(expected) - set(flat))
    unexpected = sorted("/".join(p) for p in set(flat) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"params do not match the config: missing {missing}, "
                              f"unexpected {unexpected}.")
    out = {}
    for path, x in flat.items():
        if tuple(x.shape) != expected[path]:
            raise CheckpointError(f"param '{'/'.join(path)}' has shape {tuple(x.shape)} but the "
                                  f"config expects {expected[path]}.")
        out[_hf_name(path)] = np.ascontiguousarray(x.T if _is_linear_kernel(path, x.ndim) else x)
    for name, x in hf_vision_vq.vision_to_hf(params["vision_model"], config.vision).items():
        out[VISION_PREFIX + name] = x
    for name, x in hf_vision_vq.vq_to_hf(params["vqmodel"], config.vq).items():
        out[VQ_PREFIX + name] = x
    return out


# ---------------------------------------------------------------------------------------------
# Directories.

def _read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-download or rewrite it.") from None


def _weight_files(path: pathlib.Path):
    index = path / WEIGHTS_INDEX_FILE
    if index.exists():
        files = sorted(set(_read_json(index).get("weight_map", {}).values()))
        absent = [f for f in files if not (path / f).exists()]
        if absent:
            raise CheckpointError(f"{index} lists shard(s) {absent} that are not in {path}; "
                                  "download every shard of the checkpoint.")
        return [path / f for f in files]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        hint = (f" (found {pickled}: pickle files are never loaded; re-save them with "
                "`save_pretrained(..., safe_serialization=True)`)") if pickled else ""
        raise CheckpointError(f"no {WEIGHTS_FILE} (or {WEIGHTS_INDEX_FILE} with shards) in "
                              f"{path}{hint}; expected a Hugging Face Janus model directory.")
    return files


def _load_safetensors(files) -> Dict[str, np.ndarray]:
    tensors = {}
    for f in files:
        tensors.update(load_flat(f, "download that file of the checkpoint again"))
    return tensors


def _load_tokenizer(path: pathlib.Path):
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        return None
    try:
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # a broken tokenizer must not look like a missing one
        raise CheckpointError(f"could not load the tokenizer in {path}: {e}. Fix or remove the "
                              "tokenizer files.") from None


def _special_ids(path: pathlib.Path, tokenizer) -> Dict[str, int]:
    ids: Dict[str, int] = {}
    if tokenizer is not None:
        for key, text in SPECIAL_TOKEN_STRINGS.items():
            tid = tokenizer.convert_tokens_to_ids(text)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id:
                ids[key] = tid
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(tokenizer, key, None)
            if isinstance(value, int):
                ids[key] = value
    gen_path = path / GENERATION_CONFIG_FILE
    if gen_path.exists():
        gen = _read_json(gen_path)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if isinstance(gen.get(key), int):
                ids[key] = gen[key]
        for key in ("boi_token_id", "eoi_token_id"):
            value = (gen.get("generation_kwargs") or {}).get(key)
            if isinstance(value, int):
                ids[key] = value
    return ids


def import_hf_dir(path, scan_layers: bool = False, remat_policy: str = "none",
                  dtype: str = "float32", param_dtype: str = "float32",
                  attention_impl: str = "xla"):
    """Read a Hugging Face Janus directory. Returns (params, JanusConfig, tokenizer or None).

    Params are jnp arrays in `param_dtype`; the execution options go into config.text."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model directory {path} does not exist; pass a Hugging Face Janus "
                              f"directory holding {CONFIG_FILE} and {WEIGHTS_FILE}.")
    config_path = path / CONFIG_FILE
    if not config_path.exists():
        raise CheckpointError(f"{config_path} is missing; a Hugging Face Janus directory needs "
                              f"{CONFIG_FILE} next to {WEIGHTS_FILE}.")
    files = _weight_files(path)
    hf_config = _read_json(config_path)
    tokenizer = _load_tokenizer(path)
    config = hf_config_to_jaxgen(
        hf_config, _special_ids(path, tokenizer), scan_layers=scan_layers,
        remat_policy=remat_policy, dtype=dtype, param_dtype=param_dtype,
        attention_impl=attention_impl)
    tie = bool(hf_config.get("tie_word_embeddings", False))
    params = params_from_hf_tensors(_load_safetensors(files), config, tie_word_embeddings=tie)
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=jnp.dtype(param_dtype)), params)
    return params, config, tokenizer


def export_hf_dir(params, config: JanusConfig, path, tokenizer=None,
                  processor_from=None) -> pathlib.Path:
    """Write config.json, generation_config.json, model.safetensors and, with a tokenizer, the
    tokenizer and processor files JanusProcessor.from_pretrained reads (`processor_from`'s
    processor files when that directory has them, else settings derived from the config)."""
    path = pathlib.Path(path)
    hf_config = jaxgen_config_to_hf(config)  # validates before anything is written
    tensors = params_to_hf_tensors(params, config)
    # Tensors keep their dtype (bfloat16 params are written as BF16, which torch reads).
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
    (path / GENERATION_CONFIG_FILE).write_text(json.dumps(generation_config_dict(config), indent=2) + "\n")
    save_tree(path / WEIGHTS_FILE, tensors, metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
        write_processor(path, config, processor_from)
    return path
