"""The diffusion path's decoder (flow matching on the unified model's hidden states):
`configs/flow.py:<arg>`, arg in shapes | tiny.

Command (on the demo's SFT model: it writes the layout plan, the flow decoder draws it):
    jaxgen train flow --config configs/flow.py:shapes --workdir runs/flow \
        --config.policy=runs/demo/sft/final
Runtime: 0.61 s per step (batch 16; the frozen LLM runs forward and backward for the queries'
gradient) on a 2-core CPU, 2026-11-24: 1500 steps in 15 minutes, plus the evaluation (64
held-out prompts: the LLM writes the plan, 20 Euler steps with CFG 3).
Result: <workdir>/final = the policy's checkpoint plus flow_config.json / flow.safetensors, the
held-out accuracy of the pixel-only evaluator in metrics.jsonl ('eval/accuracy') and a sample
grid in <workdir>/samples/. Measured 2026-11-24: the loss falls 2.0 -> 0.47 in 1500 steps but the
samples are colour fragments, held-out accuracy 0/64; resumed to 3500 steps
(--config.total_steps=3500, 30 more minutes) 2/64 = 3.1%, where the demo SFT's image tokens
scored 4.8-8.5%. A decoder good enough for RL needs accelerator-scale training
(docs/experiments.md: Does the flow decoder learn on a CPU budget?). Next:
`jaxgen train flow_grpo --config configs/flow_grpo.py:shapes --config.policy=<workdir>/final`.
Variants:
  shapes  a 4-layer, 128-wide DiT (1.6M parameters) with 16 query tokens on the 8x8x8 latent grid
          of the demo's VQ; the LLM frozen (MetaQuery), reasoning = the layout plan.
  tiny    a 2 x 32 DiT, 4 steps, for tests (seconds); pass --config.policy (a tiny checkpoint
          dir): `jaxgen train flow --config configs/flow.py:tiny --workdir W --config.policy=C`.
"""

import ml_collections

from jaxgen.models.config import ConfigError


def get_config(arg=None):
    arg = arg or "shapes"
    if arg not in ("shapes", "tiny"):
        raise ConfigError(f"unknown flow config {arg!r}; use shapes or tiny")
    shapes = arg == "shapes"
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.policy = ""  # the unified model's jaxgen checkpoint dir (tokenizer and VQ included)
    c.flow = dict(num_queries=16 if shapes else 4, hidden_size=128 if shapes else 32,
                  num_layers=4 if shapes else 2, num_heads=4, mlp_ratio=4, connector_depth=2,
                  frequency_dim=128 if shapes else 16, dtype="float32", param_dtype="float32")
    # MetaQuery freezes the LLM: the reasoning it writes stays the SFT model's
    c.train_llm = False
    c.total_steps = 1500 if shapes else 4
    c.batch_size = 16 if shapes else 4
    c.grad_accum_steps = 1
    c.compute_dtype = "float32"
    c.sample_grid = 16 if shapes else 4
    c.data = dict(source="shapes", path="", image_root="", data_dir="", seed=0, canvas=64,
                  num_examples=8000 if shapes else 16, reasoning="plan" if shapes else "none",
                  text_len=160 if shapes else 32)
    # SD3's logit-normal timesteps; 10% of rows with the text hidden for CFG
    c.loss = dict(timesteps="logit_normal", logit_mean=0.0, logit_std=1.0, cond_dropout=0.1)
    c.optim = dict(name="adamw", learning_rate=5e-4 if shapes else 1e-3,
                   warmup_steps=100 if shapes else 1, schedule="cosine", end_lr_ratio=0.05,
                   b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0, decay_steps=0)
    c.mesh = dict(data=1, fsdp=-1, tensor=1, layout="fsdp")
    c.train = dict(log_every=25 if shapes else 1, ckpt_every=250 if shapes else 2,
                   keep_checkpoints=2, eval_every=0, async_checkpoints=True)
    c.sampling = dict(max_think_tokens=112 if shapes else 0, temperature=1.0, cfg_weight=3.0,
                      num_steps=20 if shapes else 4, shift=1.0, noise_level=0.0, snap=True)
    c.eval = dict(num_prompts=64 if shapes else 0, seed=7, batch_size=32 if shapes else 4)
    return c
