"""`jaxgen demo`: the end-to-end ShapesWorld run (data, VQ, SFT, judge, GRPO, eval report).

Command:  jaxgen demo --workdir runs/demo
          No variants; change a stage with --config.<stage>.<field>=value.
Runtime:  14.5 min on a 2-core CPU (float32 matmul 297.5 GFLOP/s), 2026-12-02, nothing else
          running: data 14 s, VQ 293, SFT 239, judge 83, GRPO 153, eval 84. Each stage resumes
          from its own directory.
Result:   <workdir>/eval/report/ (report.md, report.json, reward curve, accuracy plot, sample
          grids with their reasoning). Held-out accuracy (352 samples, pixel-only evaluator),
          2026-12-02, two fresh runs with bitwise equal models: VQ ceiling 83.5%, untrained
          0.6%, SFT 4.8%, GRPO 2.8%; GRPO - SFT -2.0 points (95% interval -4.5 to +0.3), inside
          the drift of GRPO on pure noise (docs/experiments.md: Does GRPO beat SFT on the demo?).
Larger budgets (same machine, 2026-12-02: 25.0 min with another job beside its VQ stage; SFT
7.4%, GRPO 6.0%, GRPO - SFT -1.4 points):
    jaxgen demo --workdir runs/demo900 --config.vq.batch_size=8 --config.sft.total_steps=900 \
        --config.judge.total_steps=300 --config.grpo.total_steps=64

Stages and their family configs (each overridable as --config.<stage>.<field>=value):
  data  configs/data.py:shapes   ShapesWorld datasets + tokenizer
  vq    configs/vq.py:shapes     the VQ image tokenizer
  sft   configs/sft.py:shapes    prompt -> layout plan -> image tokens
  judge configs/sft.py:shapes    understanding task only: image -> its prompt ('describe')
  grpo  configs/grpo.py:shapes_caption_vq   GRPO with the judge's caption likelihood plus the
                                            policy tokenizer's round-trip consistency as reward
  eval  held-out prompts, SFT vs GRPO, pixel-only evaluator
On a CPU-only host vq, sft, judge and grpo each run in a child process that splits the CPU into
two JAX devices (cpu_devices). The demo budgets below are smaller than the families' defaults so
the whole run fits on a CPU.
"""

import ml_collections

from jaxgen.config import load_config
from jaxgen.models.config import ConfigError

def get_config(arg=None):
    if arg:
        raise ConfigError(f"configs/demo.py has no variants (got {arg!r}); change a stage with "
                          "--config.<stage>.<field>=value")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = load_config("data:shapes")
    c.vq = load_config("vq:shapes")
    # On a CPU-only host each training stage runs in a child process that splits the CPU into
    # this many JAX devices, its batch data-parallel over them (jaxgen/cpu_devices.py; 1: in
    # this process): XLA runs a convolution on one core and a device's small matmuls on too few.
    # docs/experiments.md: How many CPU devices per training stage?
    c.cpu_devices = ml_collections.ConfigDict(dict(vq=2, sft=2, judge=2, grpo=2))
    data_parallel = dict(data=-1, fsdp=1, tensor=1, layout="dp")  # the models are small
    # whole batches on two devices (on one, 4 micro-batches are faster)
    c.vq.grad_accum_steps = 1  # docs/experiments.md: How should the VQ step split its batch?
    # batch 4, not the family's 8, for the 15-minute budget: 4.7 vs 3.2 steps/s, 25.2 vs 26.1 dB
    c.vq.batch_size = 4  # docs/experiments.md: Which VQ batch size?
    # the stage's end reports the held-out PSNR (each mid-run eval took 4.5 s)
    c.vq.train.eval_every = 0  # docs/experiments.md: What fits the demo in 15 minutes?
    c.sft = load_config("sft:shapes")
    # 900 steps score higher (7.8% vs 4.8% on 704 held-out samples, same VQ) in 367 vs 239 s
    c.sft.total_steps = 560  # docs/experiments.md: How many SFT steps?
    c.sft.batch_size = 8
    # rows of 256 tokens, each packed with ~2 sequences of prompt + layout plan + <boi> + 64 codes
    # (mean ~128 tokens, longest ~180)
    c.sft.data.seq_len = 256
    c.sft.data.packing = True  # docs/experiments.md: Does packing speed up SFT?
    c.sft.eval.num_prompts = 0  # the eval stage below measures it
    # 4 layers unrolled: with the training steps' YNNPACK dot fusion (jaxgen/train/xla_options.py)
    # XLA's CPU backend runs the step faster than scanned (0.66-0.71 vs 0.81-0.93 s per step).
    # GRPO's policy keeps the SFT checkpoint's layout.
    c.sft.model_options.scan_layers = False  # docs/experiments.md: Scanned or unrolled layers?
    c.sft.mesh = ml_collections.ConfigDict(data_parallel)
    c.judge = load_config("sft:shapes")
    c.judge.model.understanding_input = "vq_codes"  # reads images as its own VQ tokens
    # image -> its prompt (every prompt token supervised); the reward is how much the image raises
    # the prompt's likelihood. A yes/no judge ('yes_no') stayed at chance at these budgets.
    c.judge.data.judge_task = "describe"  # docs/experiments.md: Which judge task?
    c.judge.data.num_examples = 4000
    # 300 before the 15-minute budget; its caption reward ranks the samples little either way
    c.judge.total_steps = 160  # docs/experiments.md: What fits the demo in 15 minutes?
    c.judge.batch_size = 16
    c.judge.data.seq_len = 128  # <boi> + 64 image codes + question + answer
    c.judge.data.task_mix = dict(generation=0.0, understanding=1.0)
    c.judge.optim.warmup_steps = 10
    c.judge.eval.num_prompts = 0
    c.judge.model_options.scan_layers = False  # as the SFT's, above
    c.judge.mesh = ml_collections.ConfigDict(data_parallel)
    c.grpo = load_config("grpo:shapes_caption_vq")
    c.grpo.sampling.max_think_tokens = 112  # the policy writes its layout plan, then draws
    c.grpo.sampling.image_temperature = 0.6  # as evaluated below
    # Rollouts from the categories whose layout plans the SFT model already writes right, so
    # every reward teaches drawing (the others fail in the plan, on held-out colour-shape pairs
    # that train prompts never show); with the detector as reward, lr 3e-5 and conditional
    # log-probs this recipe lifted held-out accuracy 7.8% -> 11.8% in 64 iterations.
    # docs/experiments.md: Which prompts should GRPO roll out from?
    c.grpo.data.categories = ("single_object", "two_object", "counting", "cb_shape")
    # 64 before the 15-minute budget; with this reward more iterations lower held-out accuracy
    c.grpo.total_steps = 40  # docs/experiments.md: How many GRPO iterations?
    c.grpo.optim.learning_rate = 3e-5  # the family's 1e-4 dropped held-out accuracy to 2.3%
    # no better or worse than the sampler's CFG log-probs with this reward at 64 iterations
    c.grpo.grpo.cfg_mode = "conditional"  # docs/experiments.md: Which log-probs should GRPO update?
    c.grpo.mesh = ml_collections.ConfigDict(data_parallel)
    c.eval = ml_collections.ConfigDict(dict(
        split="test",  # held-out compositions
        # 352 samples: binomial s.e. ~1.4 points at 7%
        prompts_per_category=16,  # docs/experiments.md: How precise is the held-out eval?
        samples_per_prompt=2,
        batch_size=32,
        seed=1234,
        think=True,
        max_think_tokens=112,
        cfg_weight=3.0,
        temperature=1.0,  # reasoning tokens
        # a small, briefly trained model draws single-coloured objects at 0.6; at 1.0 its image
        # tokens scatter hues across an object
        image_temperature=0.6,
        uncond_hides="prompt_and_reasoning",  # as the SFT's prompt dropout trained it
        grid_samples=16,
    ))
    return c
