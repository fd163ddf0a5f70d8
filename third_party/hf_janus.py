"""The Hugging Face `transformers` Janus reference: tiny random models built offline.

Used by the parity tests (tests/conftest.py) and benchmarks. Nothing here touches a hub.
"""

from __future__ import annotations

# Scale of the random perturbation added to every HF parameter so that norms, biases and the
# codebook are far from their default init (a parity test against ones/zeros proves little).
PERTURB_STD = 0.05
SEED = 0


def tiny_janus_config():
    """The jaxgen JanusConfig of configs/janus.py:tiny."""
    from jaxgen.config import load_config
    from jaxgen.models.janus import config_from_configdict
    return config_from_configdict(load_config("janus:tiny"))


def hf_config_for(config):
    """transformers.JanusConfig with the same shapes as a jaxgen JanusConfig (built by hand here,
    independent of jaxgen.convert, so the fixture also checks the converter's config mapping)."""
    import transformers
    t, v, q = config.text, config.vision, config.vq
    text = transformers.LlamaConfig(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads, head_dim=t.head_dim, rms_norm_eps=t.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta},
        max_position_embeddings=t.max_position_embeddings, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    vision = transformers.models.janus.JanusVisionConfig(
        hidden_size=v.hidden_size, num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads, image_size=v.image_size, patch_size=v.patch_size,
        mlp_ratio=v.mlp_ratio, layer_norm_eps=v.layer_norm_eps, projection_dim=v.projection_dim,
        depth=v.depth, num_image_tokens=v.num_image_tokens)
    vq = transformers.models.janus.JanusVQVAEConfig(
        embed_dim=q.embed_dim, num_embeddings=q.num_embeddings, latent_channels=q.latent_channels,
        base_channels=q.base_channels, channel_multiplier=list(q.channel_multiplier),
        num_res_blocks=q.num_res_blocks, projection_dim=q.projection_dim,
        num_hidden_layers=q.num_hidden_layers, image_token_embed_dim=q.image_token_embed_dim)
    return transformers.JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                                    image_token_id=config.image_token_id, tie_word_embeddings=False)


def tiny_word_tokenizer(config):
    """A word-level fast tokenizer whose special ids match the tiny config."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    specials = {
        config.image_token_id: "<image_placeholder>", config.boi_token_id: "<begin_of_image>",
        config.eoi_token_id: "<end_of_image>", config.pad_token_id: "<pad>",
        config.bos_token_id: "<bos>", config.eos_token_id: "<eos>",
    }
    vocab = {f"w{i}": i for i in range(config.text.vocab_size) if i not in specials}
    vocab.update({s: i for i, s in specials.items()})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="w0", additional_special_tokens=["<image_placeholder>", "<begin_of_image>",
                                                   "<end_of_image>"],
        # the names JanusProcessor reads (tokenizer.image_token, ...)
        extra_special_tokens={"image_token": "<image_placeholder>",
                              "boi_token": "<begin_of_image>", "eoi_token": "<end_of_image>"})


def save_random_hf_janus(config, path, seed: int = SEED, perturb_std: float = PERTURB_STD):
    """Save a random `JanusForConditionalGeneration` with `config`'s shapes (plus a word-level
    tokenizer, a JanusProcessor (PIL image processor) and a generation_config ready for image
    generate) to `path`; returns `path`."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.JanusForConditionalGeneration(hf_config_for(config)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(perturb_std * torch.randn_like(p))
    gen = model.generation_config
    gen.bos_token_id = config.bos_token_id
    gen.eos_token_id = config.eos_token_id
    gen.pad_token_id = config.pad_token_id
    gen.generation_kwargs = {"boi_token_id": config.boi_token_id}
    gen._from_model_config = False  # else from_pretrained drops generation_kwargs on reload
    model.save_pretrained(path, safe_serialization=True)
    size = config.vision.image_size
    image_processor = transformers.JanusImageProcessorPil(
        size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    transformers.JanusProcessor(image_processor=image_processor, tokenizer=tiny_word_tokenizer(config),
                                num_image_tokens=config.vision.num_image_tokens).save_pretrained(path)
    return path
