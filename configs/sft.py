"""SFT of the unified model (prompt -> reasoning -> image tokens): `configs/sft.py:<arg>`,
arg in shapes | tiny | janus_pro_1b | janus_pro_7b.

Command (ShapesWorld, after `jaxgen data build` and `jaxgen train vq`):
    jaxgen train sft --config configs/sft.py:shapes --workdir runs/sft \
        --config.data.data_dir=data/shapes --config.data.vq_params=runs/vq/vq_params.safetensors
Result: a jaxgen checkpoint in <workdir>/final (for `jaxgen sample`, or GRPO's policy) and the
held-out accuracy of its samples in metrics.jsonl ('eval/accuracy', 64 prompts, pixel-only
evaluator).
Variants:
  shapes        configs/janus.py:shapes (Llama 4 x 256, 64 image tokens), reasoning = layout plan;
                2000 steps x batch 32, not timed. The demo runs it at 560 steps x batch 8 (packed
                256-token rows, unrolled layers, two CPU devices; configs/demo.py) in 239 s on a
                2-core CPU (float32 matmul 297.5 GFLOP/s), 2026-12-02: held-out accuracy 4.8% on
                352 samples (untrained 0.6%); 900 steps: 7.4%.
  tiny          configs/janus.py:tiny shapes, 6 steps, for tests (seconds).
  janus_pro_1b  a Janus-Pro checkpoint taught to write a detailed caption before its image tokens
  janus_pro_7b  (ReasonGen-R1's SFT) on your ReasonGen-R1 style JSONL (one line per example:
                brief caption, detailed caption, image path; jaxgen/data/readers.py names the
                keys); tokenizer and VQ come from the checkpoint, the records are tokenised and
                VQ-encoded once into <workdir>/sft_cache.npz. No run measured: it needs a
                converted checkpoint, the data and accelerators. `jaxgen aot sft` (2026-11-24):
                1b at batch 32 peaks at 68.7 GiB on one H100 80GB; 7b (batch 128 x 1024) on 64
                devices needs 24.2 GiB per device, 7.0 with model_options.remat_policy=full.
                W/final is the policy_checkpoint of the configs/recipes/*:1b / 7b GRPO recipes.
    jaxgen convert hf-to-jax --hf-dir Janus-Pro-1B --out /ckpt/janus_pro_1b
    jaxgen train sft --config configs/sft.py:janus_pro_1b --workdir W \
        --config.init_checkpoint=/ckpt/janus_pro_1b --config.data.path=sft.jsonl \
        --config.data.image_root=IMAGES
Loss weights (ReasonGen-R1): text 2.0, image 1.0, <begin_of_image> 0.0 (1.0 for shapes, see
c.loss); prompt dropout 0.1.
A judge that reads pixels through a pretrained convolutional tower (the demo's judge stage with
these overrides; within-prompt AUC 0.59 vs the demo judge's 0.51, 2026-11-23; docs/experiments.md:
Does a pretrained vision tower make a better judge?):
    --config.model.understanding_input=siglip --config.model.vision.stem=conv
    --config.init_fresh_parts="('vision_model',)" --config.vision_pretrain.steps=600
"""

import ml_collections

from jaxgen.config import load_config
from jaxgen.models.config import ConfigError


def get_config(arg=None):
    arg = arg or "shapes"
    if arg in ("janus_pro_1b", "janus_pro_7b"):
        return _janus_pro(arg[-2:])
    if arg not in ("shapes", "tiny"):
        raise ConfigError(f"unknown sft config {arg!r}; use shapes, tiny, janus_pro_1b or "
                          "janus_pro_7b")
    shapes = arg == "shapes"
    c = ml_collections.ConfigDict()
    c.model = load_config(f"janus:{arg}").model
    # Execution options of the LLM (not weights): scan over layers, rematerialisation.
    c.model_options = dict(scan_layers=True, remat_policy="none")
    c.seed = 0
    c.init_checkpoint = ""  # a jaxgen checkpoint dir to start from (empty: random init)
    # parameter groups initialised fresh instead of from init_checkpoint (e.g. ('vision_model',)
    # for a judge whose vision tower differs from the policy's)
    c.init_fresh_parts = ()
    # steps > 0: before SFT, train the SigLIP-path vision tower to name the shape and colour
    # covering each patch (labels from the layout plans; jaxgen/train/vision_pretrain.py)
    c.vision_pretrain = dict(steps=0, batch_size=32, learning_rate=1e-3)
    # 'codebook': image-input embeddings start at the trained VQ codebook rows (same [codes, 8]
    # shape), so similar-looking codes are similar inputs from step 0: at steps 100-275 of the demo
    # SFT the image loss is ~0.35 nats lower than with the random init ('random', Janus's).
    # docs/experiments.md: Codebook or random init for the image-input embeddings?
    c.init_generation_embeddings = "codebook" if shapes else "random"
    c.total_steps = 2000 if shapes else 6
    c.batch_size = 32 if shapes else 4
    c.grad_accum_steps = 1
    c.compute_dtype = "float32"  # 'bfloat16' on accelerators (float32 master weights either way)
    c.sample_grid = 16 if shapes else 4
    c.data = dict(
        # 'shapes' (ShapesWorld: data_dir from `jaxgen data build`, else rendered on the fly) or
        # 'reasongen_jsonl' (a ReasonGen-R1 style JSONL at `path`, images under `image_root`)
        source="shapes", path="", image_root="",
        data_dir="", tokenizer="", vq_params="", seed=0, canvas=64,
        num_examples=8000 if shapes else 16, seq_len=160 if shapes else 128,
        reasoning="plan" if shapes else "none",  # plan | caption | none
        # Dropped rows hide the prompt and the layout plan, so CFG at sampling time amplifies
        # what the plan asks for (hiding the prompt alone leaves the plan in both rows).
        prompt_dropout=0.1, dropout_hides="prompt_and_reasoning" if shapes else "prompt",
        task_mix=dict(generation=1.0, understanding=0.0),
        # Understanding (judge) rows: 'yes_no' (does this image show <prompt>? yes / no),
        # 'describe' (image -> its prompt, for the 'vlm_caption' reward; `blank_fraction` of the
        # rows show a blank image so the judge learns the prompt prior the reward subtracts) or
        # 'crop' (one object zoomed -> its name, for the 'vlm_crop' reward; `empty_fraction` of
        # the records add a crop of background -> "Nothing.").
        judge_task="yes_no", blank_fraction=0.15, empty_fraction=0.0,
        # Understanding rows: images as rendered or through the VQ tokenizer ('vq', as
        # the policy's samples look), and the fraction of easy negatives (another prompt).
        understanding_images="rendered", easy_negatives=0.0,
        # plus describe-the-image rows (answer: the layout plan) for this fraction of records
        caption_fraction=0.0,
        # plus, for 'describe', this fraction of records redrawn with the policy's own
        # teacher-forced mistakes (init_checkpoint; a random `degraded_code_fraction` range of
        # the codes resampled at `degraded_temperature`), described as "Malformed drawing."
        # (jaxgen/train/self_eval.py): the judge learns drawing quality from matched pairs.
        degraded_fraction=0.0, degraded_temperature=1.0, degraded_code_fraction=(0.25, 1.0),
        # plus, for 'describe', this fraction of records with one object redrawn malformed by
        # the renderer (jaxgen/data/corruptions.py: morph, wobble, colour blend, fragment),
        # also described as "Malformed drawing." (labels from the renderer, not the evaluator);
        # for 'crop', this fraction of the objects redrawn so before they are cut out.
        corrupted_fraction=0.0,
        # the corruptions drawn from (empty: all of jaxgen.data.corruptions.CORRUPTIONS), and for
        # 'crop' a range of Gaussian blur sigmas (pixels) applied to every scene before cutting
        corruption_kinds=(), crop_blur=(0.0, 0.0),
        # Pack several generation sequences into each seq_len row (attention stays inside each
        # sequence): the same loss without computing padding.
        packing=False,
    )
    # ReasonGen-R1 weights <begin_of_image> 0 because its template appends the token after the
    # reasoning; here the model itself ends its layout plan with <begin_of_image> (the sampler
    # stops thinking there), so the shapes config learns it (weight 0: plans never end).
    c.loss = dict(text_weight=2.0, image_weight=1.0, boi_weight=1.0 if shapes else 0.0,
                  eoi_weight=0.0, answer_weight=1.0)
    c.optim = dict(name="adamw", learning_rate=1e-3 if shapes else 1e-3,
                   warmup_steps=100 if shapes else 1, schedule="cosine", end_lr_ratio=0.05,
                   b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05, grad_clip_norm=1.0,
                   decay_steps=0,
                   frozen=("vqmodel",))  # the VQ tokenizer stays as trained
    c.mesh = dict(data=1, fsdp=-1, tensor=1, layout="fsdp")
    c.train = dict(log_every=25 if shapes else 1, ckpt_every=250 if shapes else 2,
                   keep_checkpoints=2, eval_every=0, async_checkpoints=True)
    c.eval = dict(num_prompts=64 if shapes else 0, seed=7, batch_size=32 if shapes else 4,
                  max_think_tokens=0, cfg_weight=3.0, greedy=False, image_temperature=1.0,
                  temperature=1.0)
    return c


def _janus_pro(size: str):
    """Reasoning-then-image SFT of a Janus-Pro checkpoint on your own ReasonGen-R1 style data."""
    c = get_config("shapes")
    c.model = load_config(f"janus:{size}").model
    # the converted (unrolled, float32) checkpoint runs with the size's layer layout (1b
    # unrolled, 7b scanned: configs/janus.py) and remat; bf16 compute
    c.model_options = dict(scan_layers=c.model.text.scan_layers,
                           remat_policy="dots_attention_saveable")
    c.compute_dtype = "bfloat16"
    c.init_generation_embeddings = "random"  # unused: the weights come from init_checkpoint
    c.total_steps = 2000
    c.batch_size = 128  # Janus-Pro-R1's SFT batch
    c.data.update(dict(source="reasongen_jsonl", canvas=384, num_examples=1_000_000,
                       # prompt + detailed caption (<= ~400 tokens) + <boi> + 576 image codes
                       seq_len=1024, reasoning="caption", dropout_hides="prompt",
                       packing=False))
    # ReasonGen-R1's weights: text 2.0, image 1.0, <begin_of_image> 0 (its template appends it)
    c.loss.update(dict(text_weight=2.0, image_weight=1.0, boi_weight=0.0))
    c.optim.update(dict(learning_rate=2e-5, warmup_steps=100))  # Janus-Pro-R1's SFT lr
    c.eval.num_prompts = 0  # the ShapesWorld evaluator does not apply to real images
    c.sample_grid = 0
    c.train.update(dict(log_every=10, ckpt_every=200))
    return c
