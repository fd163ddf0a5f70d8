"""Benchmark helpers: the analytic model-FLOPs count that the GPU MFU figure rests on."""

import argparse

import jax
import pytest

from jaxgen import parallel
from jaxgen.bench import grpo as bench_grpo
from jaxgen.bench import sft as bench_sft
from jaxgen.config import load_config
from jaxgen.errors import UserError
from jaxgen.models import janus
from jaxgen.rewards import tokenizer_consistency
from jaxgen.train import optim, sft_loss, state as st


@pytest.mark.parametrize("heads_at", ["every position", "their targets"])
def test_model_flops_match_xla_count_of_the_sft_step(heads_at):
    """6N + attention per token vs XLA's FLOP count of the compiled CPU step (which adds the
    elementwise work and AdamW): equal within 0-10% for the demo model, with both heads at every
    position and at their gathered targets (sft_loss.head_capacities)."""
    mc = janus.config_from_configdict(load_config("janus:shapes"))
    batch = bench_sft.synthetic_batch(mc, batch=4, text_len=48, seed=0)
    cfg = bench_sft.step_config(1e-4)
    opt = optim.make_optimizer(cfg, total_steps=10)
    mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1})
    params = jax.eval_shape(lambda r: janus.init_params(mc, r), jax.random.PRNGKey(0))
    state = jax.eval_shape(lambda p, r: st.create_state(p, opt, r), params, jax.random.PRNGKey(0))
    sh = st.state_shardings(state, janus.param_logical_axes(mc), mesh, "fsdp")
    caps = sft_loss.head_capacities([batch]) if heads_at == "their targets" else None
    step = st.make_train_step(sft_loss.make_loss_fn(mc, cfg, caps), opt, sh, mesh)
    cost = step.lower(st.abstract_state(state, sh), batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    model = bench_sft.model_flops(mc, *batch["inputs"].shape, caps)
    assert 1.0 <= cost["flops"] / model <= 1.10, (cost["flops"], model)


def test_bench_sft_rejects_a_batch_that_accumulation_does_not_divide():
    args = argparse.Namespace(model_config="janus:tiny", config_overrides=[], batch=6,
                              text_len=8, repeats=1, seed=0, torch_batch=0, accum=4)
    with pytest.raises(UserError, match="--batch 6 must be a multiple of --accum 4"):
        bench_sft.sft(args)
    args.accum, args.torch_batch = 1, -1
    with pytest.raises(UserError, match="--torch-batch >= 0"):
        bench_sft.sft(args)


def test_bench_grpo_times_every_jitted_call_of_an_iteration():
    """The GRPO benchmark splits an iteration into jitted work (sampler, scoring, update, the
    on-device rewards) and host work; a reward computed on device (the tokenizer round trip)
    counts as jitted, so the host share stays a small fraction of the iteration."""
    config = load_config("grpo:tiny")
    config.rewards = {"op": "sum", "terms": [{"name": "constant"}, {"name": "vq_consistency"}]}
    config.data.max_prompt_tokens = 40  # the benchmark's tokenizer is built from 500 prompts
    original = tokenizer_consistency.surviving_code_fraction
    r = bench_grpo.run_bench(config, iterations=2, warmup=1)
    assert tokenizer_consistency.surviving_code_fraction is original  # patches undone
    assert {"sample", "surviving_code_fraction", "runner_update"} <= set(r["jitted_calls"])
    assert r["time_jitted"] == pytest.approx(sum(r["jitted_calls"].values()))
    parts = r["time_jitted"] + r["time_host_reward"] + r["time_host_other"]
    assert parts == pytest.approx(r["time_iteration"])
    assert 0.0 <= r["share_outside_jit"] < 0.5 and r["batch"] == 8
