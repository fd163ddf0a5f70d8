"""Janus-Pro model sizes: `configs/janus.py:<arg>`, arg in tiny | shapes | 1b | 7b.

Returns ConfigDict(model=<dict for JanusConfig.from_dict>); the job configs embed it (it trains
nothing itself). Check a variant builds (CPU, seconds):
    python -c "from jaxgen.config import load_config; from jaxgen.models import janus; \
        print(janus.config_from_configdict(load_config('janus:shapes')))"
Variants:
  tiny    the parity-test size (2 layers x 64, GQA 4/2 heads, VQ 16 px / 2 levels); builds in < 1 s.
  shapes  the ShapesWorld demo model (64x64 images, 64 image tokens, Llama 4 x 256; 8.6M params,
          3.1M of them in the LLM).
  1b, 7b  Janus-Pro-1B / 7B shapes (the published configs; 2.08B / 7.41B params with the vision
          tower and VQ) for an imported checkpoint (`jaxgen convert hf-to-jax`);
          dots_attention_saveable remat, bf16 compute, cuDNN flash attention on a GPU ('auto').
          1b unrolls its 24 layers: SFT step on one H100 80GB, 2026-11-24 (`jaxgen bench sft
          --model-config janus:1b`), batch 16 / 32 / 64 (2 micro-batches) 168 / 311 / 618 ms
          unrolled vs 184 / 337 / 684 ms scanned (batch 8: 115 vs 112 ms). 7b keeps its 30
          layers scanned (compile time on pods; not measured unrolled).
Every variant takes `image_position_embeddings=True` (a learned embedding per image-token grid
index added to the image inputs; off by default and in the demo; Hugging Face export refuses it)
and `vision.stem='conv'` (stride-2 3x3 convolutions instead of SigLIP's patch embedding; Hugging
Face export refuses it too).
"""

import ml_collections

from jaxgen.models.config import ConfigError

# Special ids of the real Janus-Pro tokenizer (a ShapesWorld tokenizer overrides them).
JANUS_PRO_IDS = dict(image_token_id=100581, boi_token_id=100016, eoi_token_id=100593,
                     pad_token_id=100002, bos_token_id=100000, eos_token_id=100001)


def _tiny():
    vocab = 256
    hidden = 64
    return dict(
        text=dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  max_position_embeddings=512),
        vision=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                    patch_size=4, projection_dim=hidden, depth=2),
        vq=dict(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32,
                channel_multiplier=(1, 2), num_res_blocks=1, projection_dim=hidden,
                num_hidden_layers=2, image_token_embed_dim=hidden, image_size=16),
        image_token_id=vocab - 6, boi_token_id=vocab - 5, eoi_token_id=vocab - 4,
        pad_token_id=vocab - 3, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
    )


def _shapes():
    vocab = 512  # the demo sets it to its tokenizer's size
    hidden = 256
    return dict(
        text=dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=704, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                  max_position_embeddings=1024),
        vision=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=64,
                    patch_size=8, projection_dim=hidden, depth=2),
        # convolution-only encoder: a code depends on its neighbourhood alone, so the plain
        # background gets a few codes in every image instead of hundreds (see VQConfig)
        vq=dict(embed_dim=8, num_embeddings=256, latent_channels=64, base_channels=32,
                channel_multiplier=(1, 1, 2, 2), num_res_blocks=1, projection_dim=hidden,
                num_hidden_layers=2, image_token_embed_dim=hidden, image_size=64,
                encoder_attention=False),
        image_token_id=vocab - 6, boi_token_id=vocab - 5, eoi_token_id=vocab - 4,
        pad_token_id=vocab - 3, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
    )


def _janus_pro(hidden, layers, heads, intermediate, scan_layers):
    return dict(
        text=dict(vocab_size=102400, hidden_size=hidden, intermediate_size=intermediate,
                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                  head_dim=128, max_position_embeddings=16384, scan_layers=scan_layers,
                  remat_policy="dots_attention_saveable", dtype="bfloat16",
                  attention_impl="auto"),
        vision=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, image_size=384,
                    patch_size=16, projection_dim=hidden, depth=2),
        vq=dict(embed_dim=8, num_embeddings=16384, latent_channels=256, base_channels=128,
                channel_multiplier=(1, 1, 2, 2, 4), num_res_blocks=2, projection_dim=hidden,
                num_hidden_layers=2, image_token_embed_dim=hidden, image_size=384),
        **JANUS_PRO_IDS,
    )


VARIANTS = {
    "tiny": _tiny,
    "shapes": _shapes,
    # docs/experiments.md: Scanned or unrolled layers?
    "1b": lambda: _janus_pro(2048, 24, 16, 5632, scan_layers=False),
    "7b": lambda: _janus_pro(4096, 30, 32, 11008, scan_layers=True),
}


def get_config(arg=None):
    arg = arg or "shapes"
    if arg not in VARIANTS:
        raise ConfigError(f"unknown janus variant {arg!r}; use one of {sorted(VARIANTS)}")
    model = VARIANTS[arg]()
    # 'siglip' (Janus-Pro) or 'vq_codes': how the understanding path reads an image
    model.setdefault("understanding_input", "siglip")
    # True adds a learned embedding per image-token index (grid place) to the image inputs; off:
    # lower image-token loss but lower held-out accuracy in the demo SFT (6.5% vs 7.8%).
    # docs/experiments.md: Do image position embeddings help?
    model.setdefault("image_position_embeddings", False)
    # 'patch' (SigLIP's patch embedding) or 'conv' (stride-2 convolutions; see VisionConfig.stem)
    model["vision"].setdefault("stem", "patch")
    return ml_collections.ConfigDict({"model": model})
