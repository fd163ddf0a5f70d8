"""Import a Hugging Face `Qwen2_5_VLForConditionalGeneration` directory into jaxgen.

    import_qwen2_5_vl_dir(path, dtype='float32', param_dtype='float32', scan_layers=False,
                          remat_policy='none', shardings=None) -> (params, Qwen2_5_VLConfig)
    config_from_hf(config_json, generation_json=None, **execution_options) -> Qwen2_5_VLConfig
    params_from_hf_tensors(tensors, config) -> params        (full HF names, numpy arrays)

Reads config.json (transformers v5's nested text_config or the hub's older flat layout with
`rope_scaling`), generation_config.json (bos / eos / pad) when present, and model.safetensors or
the shards named by model.safetensors.index.json, one file at a time (jaxgen.checkpoint.files.
load_flat: a truncated file is a CheckpointError naming it). Tensor names in either layout:
the hub's `model.layers.*` / `visual.*` or v5's `model.language_model.*` / `model.visual.*`.

`shardings` (a tree like params of jax.sharding.Sharding, e.g. parallel.param_shardings(
qwen2_5_vl.param_shapes(config), qwen2_5_vl.param_logical_axes(config), mesh, layout)): each
tensor goes straight into its shards with jax.make_array_from_callback, so no device holds a
whole copy; the host holds one safetensors file at a time (all layers when scan_layers, which
stacks them on the host first).

Tensor rules: Linear weight [out, in] -> kernel [in, out]; norm weight -> scale; Conv3d patch
embedding [D, C, T, P, P] -> kernel [C*T*P*P, D]; fused qkv [3D, D] -> kernel [D, 3, D].
"""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.checkpoint.files import flatten, load_flat, read_json, shape_problems, unflatten
from jaxgen.errors import CheckpointError
from jaxgen.models import qwen2_5_vl
from jaxgen.models.config import ConfigError

MODEL_TYPE = "qwen2_5_vl"
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
_FIX = "download the checkpoint again (every file of the Hugging Face directory)"


# ------------------------------------------------------------------------------------ config


def _unsupported(what: str):
    raise CheckpointError(f"{CONFIG_FILE}: {what}; jaxgen's Qwen2.5-VL does not compute this "
                          "setting (it implements the released Qwen2.5-VL image models)")


def _text_dict(hf: dict) -> dict:
    """transformers v5 nests the text settings in text_config; older hub files keep them at the
    top level (nested values win)."""
    nested = hf.get("text_config") or {}
    return {**{k: v for k, v in hf.items() if k not in ("text_config", "vision_config")},
            **nested}


def _rope(t: dict):
    rp = t.get("rope_parameters") or t.get("rope_scaling") or {}
    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind not in ("default", "mrope"):
        _unsupported(f"rope type {kind!r} (only the default M-RoPE)")
    return float(rp.get("rope_theta", t.get("rope_theta", 1000000.0))), \
        tuple(rp.get("mrope_section", (16, 24, 24)))


def _check_attention_layers(t: dict):
    n = int(t["num_hidden_layers"])
    sliding = [i for i, kind in enumerate(t.get("layer_types") or []) if kind != "full_attention"]
    if not t.get("layer_types") and t.get("use_sliding_window") and t.get("sliding_window"):
        sliding = list(range(int(t.get("max_window_layers", n)), n))
    if sliding:
        _unsupported(f"sliding-window attention in text layers {sliding}")


def _ids(value):
    if value is None:
        return ()
    return tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))


def config_from_hf(hf: dict, generation: dict | None = None, **options) -> qwen2_5_vl.Qwen2_5_VLConfig:
    """Qwen2_5_VLConfig from config.json (and generation_config.json) dicts. options: the
    execution options scan_layers, remat_policy, dtype, param_dtype."""
    if hf.get("model_type") != MODEL_TYPE:
        raise CheckpointError(
            f"{CONFIG_FILE} has model_type {hf.get('model_type')!r}, not {MODEL_TYPE!r}: this "
            "importer reads Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration) directories only")
    t, v = _text_dict(hf), dict(hf.get("vision_config") or {})
    if not v:
        _unsupported("no vision_config")
    if t.get("hidden_act", "silu") != "silu":
        _unsupported(f"text hidden_act {t.get('hidden_act')!r} (only 'silu')")
    _check_attention_layers(t)
    rope_theta, mrope_section = _rope(t)
    vision_rope = (v.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    generation = generation or {}
    eos = _ids(generation.get("eos_token_id", t.get("eos_token_id")))
    pad = generation.get("pad_token_id", t.get("pad_token_id"))
    bos = generation.get("bos_token_id", t.get("bos_token_id"))
    try:
        text_cfg = qwen2_5_vl.TextConfig(
            vocab_size=int(t["vocab_size"]), hidden_size=int(t["hidden_size"]),
            intermediate_size=int(t["intermediate_size"]),
            num_hidden_layers=int(t["num_hidden_layers"]),
            num_attention_heads=int(t["num_attention_heads"]),
            num_key_value_heads=int(t.get("num_key_value_heads") or t["num_attention_heads"]),
            rms_norm_eps=float(t.get("rms_norm_eps", 1e-6)), rope_theta=rope_theta,
            mrope_section=mrope_section,
            max_position_embeddings=int(t.get("max_position_embeddings", 128000)),
            **{k: o for k, o in options.items() if k in qwen2_5_vl.EXECUTION_OPTIONS})
        vis_cfg = qwen2_5_vl.VisionConfig(
            depth=int(v["depth"]), hidden_size=int(v["hidden_size"]),
            intermediate_size=int(v["intermediate_size"]), num_heads=int(v["num_heads"]),
            in_channels=int(v.get("in_channels", v.get("in_chans", 3))),
            patch_size=int(v.get("patch_size", 14)),
            temporal_patch_size=int(v.get("temporal_patch_size", 2)),
            spatial_merge_size=int(v.get("spatial_merge_size", 2)),
            window_size=int(v.get("window_size", 112)),
            out_hidden_size=int(v.get("out_hidden_size", t["hidden_size"])),
            fullatt_block_indexes=tuple(int(i) for i in v.get("fullatt_block_indexes", ())),
            hidden_act=v.get("hidden_act", "silu"), rope_theta=float(vision_rope),
            **{k: o for k, o in options.items() if k in ("dtype", "param_dtype")})
        return qwen2_5_vl.Qwen2_5_VLConfig(
            text=text_cfg, vision=vis_cfg,
            image_token_id=int(hf.get("image_token_id", 151655)),
            video_token_id=int(hf.get("video_token_id", 151656)),
            vision_start_token_id=int(hf.get("vision_start_token_id", 151652)),
            vision_end_token_id=int(hf.get("vision_end_token_id", 151653)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings")
                                     or (hf.get("text_config") or {}).get("tie_word_embeddings")),
            bos_token_id=int(bos if bos is not None else -1), eos_token_ids=eos,
            pad_token_id=int(pad if pad is not None else (eos[0] if eos else 0)))
    except KeyError as e:
        raise CheckpointError(f"{CONFIG_FILE} lacks {e.args[0]!r}; {_FIX}") from None
    except ConfigError as e:
        raise CheckpointError(f"{CONFIG_FILE} describes a model jaxgen cannot run: {e}") from None


# ----------------------------------------------------------------------------------- tensors


def _linear(w):
    return w.T


def _patch_embed(w):  # Conv3d [D, C, T, P, P]: a matmul over the flattened (C, T, P, P) patch
    return w.reshape(w.shape[0], -1).T


def _qkv_kernel(w):  # [3D, D] -> [D, 3, D]
    return w.T.reshape(w.shape[1], 3, -1)


def _qkv_bias(b):
    return b.reshape(3, -1)


def _same(x):
    return x


_LEAF = {"weight": ("kernel", _linear), "bias": ("bias", _same)}
_RULES = [  # (pattern on the normalised HF name, function(match) -> (path, transform))
    (r"visual\.patch_embed\.proj\.weight",
     lambda m: (("visual", "patch_embed", "kernel"), _patch_embed)),
    (r"visual\.blocks\.(\d+)\.(norm1|norm2)\.weight",
     lambda m: (("visual", f"blocks_{m[1]}", m[2], "scale"), _same)),
    (r"visual\.blocks\.(\d+)\.attn\.qkv\.weight",
     lambda m: (("visual", f"blocks_{m[1]}", "attn", "qkv", "kernel"), _qkv_kernel)),
    (r"visual\.blocks\.(\d+)\.attn\.qkv\.bias",
     lambda m: (("visual", f"blocks_{m[1]}", "attn", "qkv", "bias"), _qkv_bias)),
    (r"visual\.blocks\.(\d+)\.(attn|mlp)\.(proj|gate_proj|up_proj|down_proj)\.(weight|bias)",
     lambda m: (("visual", f"blocks_{m[1]}", m[2], m[3], _LEAF[m[4]][0]), _LEAF[m[4]][1])),
    (r"visual\.merger\.ln_q\.weight", lambda m: (("visual", "merger", "ln_q", "scale"), _same)),
    (r"visual\.merger\.mlp\.(0|2)\.(weight|bias)",
     lambda m: (("visual", "merger", f"mlp_{m[1]}", _LEAF[m[2]][0]), _LEAF[m[2]][1])),
    (r"model\.embed_tokens\.weight",
     lambda m: (("language_model", "embed_tokens", "embedding"), _same)),
    (r"model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.(weight|bias)",
     lambda m: (("language_model", f"layers_{m[1]}", m[2], m[3], _LEAF[m[4]][0]),
                _LEAF[m[4]][1])),
    (r"model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight",
     lambda m: (("language_model", f"layers_{m[1]}", m[2], "scale"), _same)),
    (r"model\.norm\.weight", lambda m: (("language_model", "norm", "scale"), _same)),
    (r"lm_head\.weight", lambda m: (("lm_head", "kernel"), _linear)),
]


def _normalise(name: str) -> str:
    """transformers v5 module names -> the hub checkpoints' names."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    if name.startswith("model.visual."):
        return name[len("model."):]
    return name


def hf_tensor_target(name: str):
    """(params path tuple, transform) for one HF tensor name, or None when it is not a weight of
    this model."""
    name = _normalise(name)
    for pattern, target in _RULES:
        m = re.fullmatch(pattern, name)
        if m:
            return target(m)
    return None


def _convert_file(tensors: dict, config, dtype, put, out: dict, unknown: list):
    for name, value in tensors.items():
        target = hf_tensor_target(name)
        if target is None:
            unknown.append(name)
            continue
        path, transform = target
        if path[0] == "lm_head" and config.tie_word_embeddings:
            continue  # tied: the head is the embedding table, as HF ties it on load
        key = "/".join(path)
        out[key] = put(key, np.ascontiguousarray(transform(value)).astype(dtype))


def params_from_hf_tensors(tensors: dict, config) -> dict:
    """Params (host numpy, param_dtype) from {HF name: numpy array} (no shape check)."""
    out, unknown = {}, []
    _convert_file(tensors, config, np.dtype(jnp.dtype(config.text.param_dtype)),
                  lambda key, a: a, out, unknown)
    params = unflatten(out)
    if config.text.scan_layers:
        params["language_model"] = qwen2_5_vl.stack_layers(params["language_model"],
                                                           config.text.num_hidden_layers)
    return params


def weight_files(path: pathlib.Path) -> list:
    """The safetensors files of a directory, each checked to exist (CheckpointError naming
    the missing shards otherwise)."""
    index = path / WEIGHTS_INDEX_FILE
    if index.is_file():
        weight_map = read_json(index, _FIX).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map; {_FIX}")
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise CheckpointError(f"{path} is missing {len(missing)} of the {len(files)} "
                                  f"safetensors shards that {WEIGHTS_INDEX_FILE} lists: "
                                  f"{missing}; {_FIX}")
        return [path / f for f in files]
    if (path / WEIGHTS_FILE).is_file():
        return [path / WEIGHTS_FILE]
    others = sorted(p.name for p in path.glob("*.bin"))
    raise CheckpointError(f"{path} has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE}"
                          + (f" (only {others}: jaxgen reads safetensors, never pickle; save "
                             "the model with safe_serialization=True)" if others else f"; {_FIX}"))


def import_qwen2_5_vl_dir(path, dtype: str = "float32", param_dtype: str = "float32",
                          scan_layers: bool = False, remat_policy: str = "none", shardings=None):
    """(params, Qwen2_5_VLConfig) from a local Hugging Face Qwen2.5-VL directory; see the module
    docstring. dtype: compute dtype; param_dtype: the dtype params are stored in."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory; pass the Hugging Face Qwen2.5-VL "
                              "directory (config.json + safetensors)")
    if not (path / CONFIG_FILE).is_file():
        raise CheckpointError(f"{path} has no {CONFIG_FILE}; {_FIX}")
    hf = read_json(path / CONFIG_FILE, _FIX)
    gen_file = path / GENERATION_CONFIG_FILE
    generation = read_json(gen_file, _FIX) if gen_file.is_file() else None
    config = config_from_hf(hf, generation, dtype=dtype, param_dtype=param_dtype,
                            scan_layers=scan_layers, remat_policy=remat_policy)
    files = weight_files(path)

    shapes = qwen2_5_vl.param_shapes(config)
    expected = flatten(shapes)
    # scanned layers are stacked on the host after every file is read, so they are placed then
    shard_of = flatten(shardings) if shardings is not None else {}
    place_now = lambda key: not (scan_layers and key.startswith("language_model/layers_"))

    def put(key, array):
        if not place_now(key):
            return array
        return _place(array, shard_of.get(key), key, expected)

    out, unknown = {}, []
    np_dtype = np.dtype(jnp.dtype(param_dtype))
    for f in files:
        _convert_file(load_flat(f, _FIX), config, np_dtype, put, out, unknown)
    params = unflatten(out)
    if scan_layers and "language_model" in params:
        lm = dict(params["language_model"])
        layers = [lm.pop(f"layers_{i}", {}) for i in range(config.text.num_hidden_layers)]
        try:  # on the host: np.stack, never a whole stacked copy on one device
            stacked = flatten(jax.tree_util.tree_map(lambda *xs: np.stack(xs), *layers))
        except ValueError as e:
            raise CheckpointError(f"{path}: the decoder layers' tensors differ in names or "
                                  f"shapes ({e}); {_FIX}") from None
        key = "language_model/layers/"
        lm["layers"] = unflatten({k: _place(a, shard_of.get(key + k), key + k, expected)
                                  for k, a in stacked.items()})
        params["language_model"] = lm
    problems = shape_problems(params, shapes)
    if unknown:
        problems.append(f"{len(unknown)} tensors of no Qwen2.5-VL weight (e.g. {unknown[:3]})")
    if problems:
        raise CheckpointError(f"{path}: the weights do not match {CONFIG_FILE}: "
                              + "; ".join(problems) + f"; {_FIX}")
    return params, config


def _place(array: np.ndarray, sharding, key, expected):
    if expected is not None and key in expected and \
            tuple(expected[key].shape) != tuple(array.shape):
        return array  # left on the host: the shape check after loading names it
    if sharding is None:
        return jnp.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])
