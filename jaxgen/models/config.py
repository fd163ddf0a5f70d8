"""Model configuration for the unified Janus-Pro model.

Frozen dataclasses (hashable, so they can be static arguments of `jax.jit`). Field names follow
Hugging Face's `JanusConfig` sub-configs where one exists, so conversion is a rename table.
`from_dict` rejects unknown keys with a message naming the key and the known ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from jaxgen.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration a user wrote is invalid (unknown key, impossible shape)."""


def dataclass_from_dict(cls, d: Mapping[str, Any], where: str):
    """`cls(**d)` with lists made tuples (hashable); ConfigError naming any unknown key and
    `where` it was written."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where}; known keys are {sorted(known)}. "
            "Fix the spelling or remove the key.")
    kwargs = {}
    for k, v in d.items():
        kwargs[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


ATTENTION_IMPLS = ("xla", "cudnn", "auto")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Llama decoder (RMSNorm, RoPE rotate-half, GQA, SwiGLU, no biases)."""
    vocab_size: int = 102400
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 16384
    # Execution options (not part of the weights).
    scan_layers: bool = False
    remat_policy: str = "none"  # none | full | dots_saveable | dots_attention_saveable
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    # Full-sequence attention (training, prefill): 'xla' (einsum + softmax), 'cudnn' (fused
    # flash attention, GPU only, bf16/fp16 compute), 'auto' (cudnn on a GPU with a 16-bit dtype,
    # else xla). Cached decoding always uses xla.
    attention_impl: str = "xla"

    def __post_init__(self):
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ConfigError(f"text.attention_impl {self.attention_impl!r} is unknown; use one "
                              f"of {list(ATTENTION_IMPLS)}")

    @classmethod
    def from_dict(cls, d):
        return dataclass_from_dict(cls, d, "text config")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """SigLIP-style ViT for the understanding path, plus its aligner MLP into the LLM."""
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 384
    patch_size: int = 16
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6
    attention_bias: bool = True
    use_qk_norm: bool = False
    projection_dim: int = 2048  # aligner output = LLM hidden size
    depth: int = 2  # aligner: fc1 + (depth - 1) hidden layers
    # How pixels become patch tokens: 'patch' (SigLIP: one linear map per patch) or 'conv'
    # (log2(patch_size) stride-2 3x3 convolutions, widths doubling up to hidden_size: early
    # convolutions let a small tower trained from scratch read shapes; Hugging Face Janus knows
    # only 'patch').
    stem: str = "patch"

    def __post_init__(self):
        if self.stem not in VISION_STEMS:
            raise ConfigError(f"vision.stem={self.stem!r}; choose one of {list(VISION_STEMS)}")
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ConfigError(f"vision.stem='conv' halves the image per convolution, so "
                              f"vision.patch_size must be a power of two >= 2, got "
                              f"{self.patch_size}")

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_dict(cls, d):
        return dataclass_from_dict(cls, d, "vision config")


@dataclasses.dataclass(frozen=True)
class VQConfig:
    """LlamaGen-style VQ tokenizer plus the generation embedding/aligner/head sizes."""
    embed_dim: int = 8
    num_embeddings: int = 16384
    double_latent: bool = False
    latent_channels: int = 256
    in_channels: int = 3
    base_channels: int = 128
    channel_multiplier: tuple = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    out_channels: int = 3
    projection_dim: int = 2048  # generation aligner output = LLM hidden size
    num_hidden_layers: int = 2  # generation aligner / head depth
    image_token_embed_dim: int = 2048
    image_size: int = 384  # pixels of a generated image (side)
    # Nearest-code lookup on l2-normalised latents and codebook (original Janus / LlamaGen) or on
    # raw vectors (transformers' JanusVQVAE); equal when the codebook rows have unit length.
    codebook_l2_norm: bool = False
    # Self-attention in the encoder (Janus / LlamaGen: yes). Without it each code depends only on
    # its neighbourhood, so a plain background gets the same few codes in every image, which is
    # what a small language model can learn to predict (HF export needs True).
    encoder_attention: bool = True

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_multiplier) - 1)

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample

    @property
    def num_image_tokens(self) -> int:
        return self.grid ** 2

    @classmethod
    def from_dict(cls, d):
        return dataclass_from_dict(cls, d, "vq config")


UNDERSTANDING_INPUTS = ("siglip", "vq_codes")
VISION_STEMS = ("patch", "conv")


@dataclasses.dataclass(frozen=True)
class JanusConfig:
    """The unified model: LLM + understanding encoder + VQ generation path, and special ids."""
    text: LlamaConfig = dataclasses.field(default_factory=LlamaConfig)
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    vq: VQConfig = dataclasses.field(default_factory=VQConfig)
    image_token_id: int = 100581  # <image_placeholder> (understanding path)
    boi_token_id: int = 100016  # <begin_of_image>
    eoi_token_id: int = 100593  # <end_of_image>
    pad_token_id: int = 100002
    bos_token_id: int = 100000
    eos_token_id: int = 100001
    # How the understanding path reads an image: 'siglip' (Janus-Pro: SigLIP tower -> aligner) or
    # 'vq_codes' (the image as the model's own VQ tokens through the generation embeddings, as
    # token-based unified models read images). Hugging Face Janus knows only 'siglip'.
    understanding_input: str = "siglip"
    # A learned embedding per image-token index (its place in the VQ grid) added to the image
    # inputs, as LlamaGen gives image tokens 2D positions; Janus-Pro has only the 1D RoPE of the
    # sequence, so Hugging Face export refuses a model that has it.
    image_position_embeddings: bool = False

    def __post_init__(self):
        if self.understanding_input not in UNDERSTANDING_INPUTS:
            raise ConfigError(f"understanding_input={self.understanding_input!r}; choose one of "
                              f"{list(UNDERSTANDING_INPUTS)}")

    @property
    def num_image_tokens(self) -> int:
        """Image tokens the generation path writes per image."""
        return self.vq.num_image_tokens

    @property
    def num_understanding_tokens(self) -> int:
        """Placeholders an understanding prompt holds for one image."""
        if self.understanding_input == "vq_codes":
            return self.vq.num_image_tokens
        return self.vision.num_image_tokens

    @property
    def understanding_image_size(self) -> int:
        """Pixels (side) the understanding path reads an image at."""
        if self.understanding_input == "vq_codes":
            return self.vq.image_size
        return self.vision.image_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "JanusConfig":
        d = dict(d)
        sub = {
            "text": LlamaConfig.from_dict(d.pop("text", {})),
            "vision": VisionConfig.from_dict(d.pop("vision", {})),
            "vq": VQConfig.from_dict(d.pop("vq", {})),
        }
        return dataclass_from_dict(cls, {**d, **sub}, "model config")

    def replace(self, **kw) -> "JanusConfig":
        return dataclasses.replace(self, **kw)
