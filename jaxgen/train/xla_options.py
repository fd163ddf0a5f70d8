"""XLA compiler options for the jitted training steps, set per compilation (never process-wide).

On the CPU backend (jaxlib 0.10.2) XLA hands each matmul to YNNPACK as a call of its own. In the
backward pass of a transformer layer that makes XLA write transposed copies of activations for
the weight-gradient matmuls (e.g. silu's gradient as f32[704, 4064] for the MLP's up projection):
four such copy fusions took ~40% of the demo's SFT step. Asking XLA to fuse each dot with its
neighbours into YNNPACK subgraphs (`xla_cpu_experimental_ynn_fusion_type=DOT,REDUCE`) removes
them: the SFT step of the demo model (batch 16 x 254 tokens, 2-core CPU) went from 1.33 s to
0.85-0.93 s, in alternating runs. The sampler's small decode matmuls run 5-10% slower under it,
so only training steps take it (`jax.jit(..., compiler_options=...)`: state.make_train_step for
SFT, the judge and the VQ, and the GRPO and Flow-GRPO updates); the VQ trainer's
convolution-bound step is unchanged either way.

A user's own `--xla_cpu_experimental_ynn_fusion_type` in XLA_FLAGS wins: then nothing is set.
"""

from __future__ import annotations

import os

from jax.sharding import Mesh

YNN_FUSION_FLAG = "xla_cpu_experimental_ynn_fusion_type"
CPU_TRAIN_STEP_OPTIONS = {YNN_FUSION_FLAG: "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def train_step_compiler_options(mesh: Mesh) -> dict[str, str] | None:
    """`compiler_options` for jax.jit of a training step on `mesh` (None: XLA's defaults)."""
    if any(d.platform != "cpu" for d in mesh.devices.flat):
        return None
    if YNN_FUSION_FLAG in os.environ.get("XLA_FLAGS", ""):
        return None
    return dict(CPU_TRAIN_STEP_OPTIONS)
