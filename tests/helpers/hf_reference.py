"""What the parity tests ask of the Hugging Face reference model."""

import copy

import numpy as np


def hf_greedy_image_tokens(model, config, ids_with_boi, cfg_weight):
    """HF's image `generate` (greedy, CFG) on unpadded prompts that end with <begin_of_image>,
    as JanusProcessor(..., generation_mode="image") writes them: int [B, num_image_tokens]."""
    import torch
    gc = copy.deepcopy(model.generation_config)
    gc.do_sample = False
    gc.guidance_scale = cfg_weight
    gc.bos_token_id, gc.pad_token_id = config.bos_token_id, config.pad_token_id
    gc.generation_kwargs = {"boi_token_id": config.boi_token_id}
    with torch.no_grad():
        out = model.generate(torch.tensor(ids_with_boi, dtype=torch.long),
                             attention_mask=torch.ones(ids_with_boi.shape, dtype=torch.long),
                             generation_config=gc, generation_mode="image")
    return out.numpy()


def with_begin_of_image(ids, config):
    """[ids; <begin_of_image>] per row."""
    return np.concatenate([ids, np.full((len(ids), 1), config.boi_token_id)], 1)
