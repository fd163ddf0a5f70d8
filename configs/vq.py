"""VQ image tokenizer training: `configs/vq.py:<arg>`, arg in shapes | tiny.

Command:  jaxgen train vq --config configs/vq.py:shapes --workdir runs/vq
          ~8% faster with the CPU split into two devices and whole batches (as the demo runs it):
          XLA_FLAGS=--xla_force_host_platform_device_count=2 jaxgen train vq \
              --config configs/vq.py:shapes --workdir runs/vq --config.grad_accum_steps=1
Runtime:  608 s on a 2-core CPU, 2026-12-01; on two devices 3.17 steps/s (~400 s) on a 2-core CPU
          (float32 matmul 297.5 GFLOP/s), 2026-12-02.
Result:   held-out PSNR 26.14 dB (printed at the end; 'eval/psnr' in metrics.jsonl), codebook
          usage ~100%; ground-truth renderings passed through it keep 80-82% of their evaluator
          accuracy (the VQ ceiling). <workdir>/vq_params.safetensors is the SFT's data.vq_params.
Variants:
  shapes  the VQ of configs/janus.py:shapes (64 px -> 8x8 = 64 codes from 256 entries; a
          convolution-only encoder, so a code depends on its neighbourhood only).
  tiny    the VQ of configs/janus.py:tiny (16 px), 6 steps, for tests (seconds):
          `jaxgen train vq --config configs/vq.py:tiny --workdir /tmp/vq_tiny`.
Losses follow LlamaGen: L2 + codebook + 0.25 commitment; hinge PatchGAN and an LPIPS-style
perceptual term are off by default (set loss.gan_weight / loss.perceptual_weight and
loss.perceptual_weights=<VGG16 safetensors> to enable).
"""

import ml_collections

from jaxgen.config import load_config
from jaxgen.models.config import ConfigError


def get_config(arg=None):
    arg = arg or "shapes"
    if arg not in ("shapes", "tiny"):
        raise ConfigError(f"unknown vq config {arg!r}; use shapes or tiny")
    c = ml_collections.ConfigDict()
    c.model = load_config(f"janus:{arg}").model
    c.seed = 0
    # PSNR rises steadily to 1200 steps (400: 22.6 dB, 800: 25.0, 1200: 26.2) and the evaluator
    # needs the sharp shapes: the VQ ceiling goes 44% -> 80%
    c.total_steps = 1200 if arg == "shapes" else 6  # docs/experiments.md: How many VQ steps?
    c.batch_size = 8 if arg == "shapes" else 4
    # 4 micro-batches of 2 rows: on one CPU device the step is ~1.25x faster than one batch of 8
    # (XLA's convolution weight gradients run faster on fewer rows), the same update to float32
    # rounding. docs/experiments.md: How should the VQ step split its batch?
    c.grad_accum_steps = 4 if arg == "shapes" else 1
    c.compute_dtype = "float32"
    c.eval_batch_size = 64 if arg == "shapes" else 8
    c.sample_grid = 8 if arg == "shapes" else 4
    c.data = dict(seed=0, heldout_seed=12345, heldout_size=256 if arg == "shapes" else 8)
    c.optim = dict(name="adamw", learning_rate=2e-3 if arg == "shapes" else 1e-3,
                   warmup_steps=20 if arg == "shapes" else 1, schedule="cosine",
                   end_lr_ratio=0.05, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0,
                   grad_clip_norm=1.0, decay_steps=0)
    c.loss = dict(l2_weight=1.0, codebook_weight=1.0, commit_weight=0.25, l2_norm_lookup=True,
                  gan_weight=0.0, gan_start_step=0, disc_channels=64, disc_layers=3,
                  perceptual_weight=0.0, perceptual_weights="",
                  # Dead-code restarts every `restart_every` steps up to `restart_until`
                  # (0 disables), from the latents of `restart_probe_images` fixed images,
                  # drawn in proportion to their quantisation error.
                  restart_every=20 if arg == "shapes" else 2,
                  restart_until=1000 if arg == "shapes" else 4,
                  restart_probe_images=64 if arg == "shapes" else 4, restart_noise=0.01)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, layout="dp")
    c.train = dict(log_every=20 if arg == "shapes" else 1, ckpt_every=100 if arg == "shapes" else 2,
                   keep_checkpoints=2, eval_every=200 if arg == "shapes" else 0,
                   async_checkpoints=True)
    return c
