"""Configuration of Qwen2.5-VL (transformers' `Qwen2_5_VLForConditionalGeneration`).

Frozen dataclasses (hashable: static arguments of `jax.jit`). Field names follow Hugging Face's
`Qwen2_5_VLVisionConfig` / `Qwen2_5_VLTextConfig`; jaxgen/convert/qwen2_5_vl.py maps a
config.json onto them and refuses settings this implementation does not compute.
"""

from __future__ import annotations

import dataclasses

from jaxgen.models.config import ConfigError, dataclass_from_dict

# HF `hidden_act` names of the vision MLP that the vision tower computes.
VISION_ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "quick_gelu")
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICY_NAMES = ("none", "full", "dots_saveable", "dots_attention_saveable")


def _check_dtypes(where: str, dtype: str, param_dtype: str):
    for name, value in (("dtype", dtype), ("param_dtype", param_dtype)):
        if value not in DTYPES:
            raise ConfigError(f"{where}.{name}={value!r}; choose one of {list(DTYPES)}")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The ViT: Conv3d patch embedding, 2D rotary, window/full attention blocks, patch merger."""
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112  # pixels per window side (112 / 14 = 8 patches)
    out_hidden_size: int = 3584  # the language model's width
    fullatt_block_indexes: tuple = (7, 15, 23, 31)
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6  # fixed in HF's vision blocks and merger
    # Execution options (not part of the weights).
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"vision hidden_size {self.hidden_size} must divide by num_heads "
                              f"{self.num_heads}")
        if self.head_dim % 4:
            raise ConfigError(f"vision head_dim {self.head_dim} must divide by 4 (2D rotary: "
                              "half the rotated pairs for rows, half for columns)")
        if self.hidden_act not in VISION_ACTIVATIONS:
            raise ConfigError(f"vision hidden_act {self.hidden_act!r} is not implemented; "
                              f"choose one of {list(VISION_ACTIVATIONS)}")
        if self.window_size % (self.patch_size * self.spatial_merge_size):
            raise ConfigError(f"vision window_size {self.window_size} must be a multiple of "
                              f"patch_size * spatial_merge_size = "
                              f"{self.patch_size * self.spatial_merge_size}")
        bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
        if bad:
            raise ConfigError(f"vision fullatt_block_indexes {bad} are outside 0..{self.depth - 1}")
        _check_dtypes("vision", self.dtype, self.param_dtype)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Width of one row of pixel_values: C * temporal_patch * patch * patch."""
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size ** 2

    @property
    def merger_window(self) -> int:
        """Window side in merged (LLM) tokens, HF's vit_merger_window_size."""
        return self.window_size // self.spatial_merge_size // self.patch_size

    @classmethod
    def from_dict(cls, d):
        return dataclass_from_dict(cls, d, "qwen2_5_vl vision config")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Qwen2 decoder: GQA with q/k/v biases, RMSNorm, SwiGLU, M-RoPE."""
    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple = (16, 24, 24)  # rotary frequencies for (temporal, height, width)
    max_position_embeddings: int = 128000
    # Execution options (not part of the weights).
    scan_layers: bool = False
    remat_policy: str = "none"
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"text hidden_size {self.hidden_size} must divide by "
                              f"num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"text num_attention_heads {self.num_attention_heads} must divide "
                              f"by num_key_value_heads {self.num_key_value_heads}")
        if len(self.mrope_section) != 3 or sum(self.mrope_section) != self.head_dim // 2:
            raise ConfigError(f"text mrope_section {list(self.mrope_section)} must be 3 sizes "
                              f"(temporal, height, width) summing to head_dim / 2 = "
                              f"{self.head_dim // 2}")
        if self.remat_policy not in REMAT_POLICY_NAMES:
            raise ConfigError(f"text remat_policy {self.remat_policy!r}; choose one of "
                              f"{list(REMAT_POLICY_NAMES)}")
        _check_dtypes("text", self.dtype, self.param_dtype)

    @property
    def head_dim(self) -> int:
        # HF's Qwen2.5-VL attention ignores any head_dim key: hidden / heads
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d):
        return dataclass_from_dict(cls, d, "qwen2_5_vl text config")


@dataclasses.dataclass(frozen=True)
class Qwen2_5_VLConfig:
    """The whole model and its special ids (HF Qwen2.5-VL-7B-Instruct values by default)."""
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    image_token_id: int = 151655  # <|image_pad|>
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    tie_word_embeddings: bool = False
    bos_token_id: int = 151643
    eos_token_ids: tuple = (151645, 151643)  # generation stops at any of them
    pad_token_id: int = 151643

    def __post_init__(self):
        if self.vision.out_hidden_size != self.text.hidden_size:
            raise ConfigError(f"vision out_hidden_size {self.vision.out_hidden_size} must equal "
                              f"the text hidden_size {self.text.hidden_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d) -> "Qwen2_5_VLConfig":
        d = dict(d)
        sub = {"text": TextConfig.from_dict(d.pop("text", {})),
               "vision": VisionConfig.from_dict(d.pop("vision", {}))}
        return dataclass_from_dict(cls, {**d, **sub}, "qwen2_5_vl config")

    def replace(self, **kw) -> "Qwen2_5_VLConfig":
        return dataclasses.replace(self, **kw)
