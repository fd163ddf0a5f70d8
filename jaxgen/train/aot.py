"""Ahead-of-time compilation of the SFT step for a target mesh: memory per device before a run.

    jaxgen aot sft --config configs/sft.py:janus_pro_7b --devices 64 --device-memory-gib 16

lowers and compiles the step `jaxgen train sft` would run with that config (same model options,
mesh and layout, shardings, micro-batches, compute dtype and loss) from shapes alone: no
parameter is allocated, and no checkpoint, tokenizer or data is read. It prints what one device
holds (parameters, optimizer state, batch: exact, from the shardings) and what XLA's compiled
step needs on top (temporaries), and with --device-memory-gib whether that fits (exit code 1
if not), so a run that would run out of memory is found before the pod is rented (MaxText's
train_compile does the same).

Where the step compiles:
  --devices N         N CPU devices stand in for the target, on any machine. The per-device
                      state and batch are exact; the temporaries are XLA's CPU buffer assignment,
                      which fuses and schedules differently from TPU and GPU compilers (a guide).
  --devices local     this machine's own devices (exact for them, e.g. on one GPU host).
  --topology NAME     a TPU topology such as v5e:4x4, compiled by the TPU compiler without TPU
                      hardware (needs libtpu: pip install "jax[tpu]").
"""

from __future__ import annotations

import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies

from jaxgen import parallel
from jaxgen.config import load_config
from jaxgen.errors import UserError
from jaxgen.models import janus
from jaxgen.train import optim, sft_loss
from jaxgen.train import state as state_lib
from jaxgen.train.sft import init_model_params, model_config_for

GIB = float(2 ** 30)


# ------------------------------------------------------------------------------ devices

def target_devices(devices: str = "8", topology: str | None = None) -> list:
    """The devices to compile for: `topology` (TPU, via libtpu), 'local', or N CPU devices."""
    if topology:
        try:
            return list(topologies.get_topology_desc(topology, "tpu").devices)
        except RuntimeError as e:
            raise UserError(f"cannot describe TPU topology {topology!r} ({e}); install the TPU "
                            "build of JAX (pip install \"jax[tpu]\") or use --devices N") from e
    if devices == "local":
        return list(jax.devices())
    try:
        n = int(devices)
    except ValueError:
        raise UserError(f"--devices {devices!r}: give a number of CPU devices or 'local'") from None
    if n < 1:
        raise UserError(f"--devices {n}: need at least one device")
    try:  # must happen before the CPU backend starts (a fresh `jaxgen aot` process)
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        pass  # already started: fine if it has n devices (checked below)
    cpus = jax.devices("cpu")
    if len(cpus) != n:
        raise UserError(f"this process already started JAX with {len(cpus)} CPU devices, not "
                        f"{n}; run `jaxgen aot` in a fresh process or set XLA_FLAGS="
                        f"--xla_force_host_platform_device_count={n} before JAX starts")
    return cpus


# ----------------------------------------------------------------------- abstract inputs

def abstract_sft_batch(config, mc) -> dict:
    """The global batch `jaxgen train sft` feeds its step, as ShapeDtypeStructs (mirrors
    sft_data.MixedBatcher: generation rows, then understanding rows; packed rows carry
    segments)."""
    dc = config.data
    b, length = int(config.batch_size), int(dc.seq_len)
    mix = dc.task_mix
    und_rows = 0
    if float(mix.understanding) > 0:
        und_rows = int(round(b * float(mix.understanding) /
                             (float(mix.generation) + float(mix.understanding))))
    gen_rows = b - und_rows if float(mix.generation) > 0 else 0
    if gen_rows + und_rows != b:
        raise UserError("data.task_mix gives no rows: set data.task_mix.generation or "
                        ".understanding above 0")
    rows = {"inputs": jnp.int32, "input_is_image": jnp.bool_, "targets": jnp.int32,
            "target_is_image": jnp.bool_, "target_kind": jnp.int8, "region": jnp.int8,
            "valid": jnp.bool_, "positions": jnp.int32, "segment": jnp.int16,
            "task": jnp.int8}
    if not (gen_rows and dc.get("packing", False)):
        del rows["segment"]
    batch = {k: jax.ShapeDtypeStruct((b,) if k == "task" else (b, length), dt)
             for k, dt in rows.items()}
    if und_rows and mc.understanding_input == "siglip":
        size = mc.vision.image_size
        batch["pixels"] = jax.ShapeDtypeStruct((b, size, size, 3), jnp.uint8)
    return batch


def worst_case_capacities(config, mc, text_targets: int | None = None) -> dict:
    """Per-row head capacities (sft_loss.head_capacities) without data: at most every position that
    is not one of a generation row's image tokens carries a text target, unless given."""
    length = int(config.data.seq_len)
    gen_only = float(config.data.task_mix.understanding) <= 0
    image = min(length, mc.num_image_tokens) if float(config.data.task_mix.generation) > 0 else 1
    if text_targets is None:
        text_targets = length - (image if gen_only else 0)
    up = lambda n: min(length, -(-max(int(n), 1) // 8) * 8)  # noqa: E731
    return {"text": up(text_targets), "image": up(image)}


def bytes_per_device(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


def _global_bytes(tree) -> int:
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


# --------------------------------------------------------------------------------- plan

def plan_sft(config, devices, text_targets: int | None = None) -> dict:
    """Compile the SFT step of `config` for `devices` from shapes; returns sizes in bytes."""
    mc = model_config_for(config, None)
    mesh = parallel.make_mesh(config.mesh, devices=devices)
    layout = config.mesh.get("layout", "fsdp")
    parallel.check_batch_divides(int(config.batch_size), mesh)
    accum = int(config.grad_accum_steps)
    if int(config.batch_size) % accum:
        raise UserError(f"batch_size={config.batch_size} does not split into "
                        f"grad_accum_steps={accum} micro-batches")
    opt = optim.make_optimizer(config)
    abstract = jax.eval_shape(lambda r: state_lib.create_state(
        init_model_params(mc, r), opt, r), jax.random.PRNGKey(0))
    shardings = state_lib.state_shardings(abstract, janus.param_logical_axes(mc), mesh, layout)
    state = state_lib.abstract_state(abstract, shardings)
    batch_sh = parallel.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh)
             for k, v in abstract_sft_batch(config, mc).items()}
    capacities = worst_case_capacities(config, mc, text_targets)
    step = state_lib.make_train_step(sft_loss.make_loss_fn(mc, config, capacities), opt, shardings,
                                     mesh, accum_steps=accum,
                                     compute_dtype_name=config.compute_dtype, layout=layout,
                                     # the accelerator's program, even when planned on CPU
                                     unroll_accumulation=False)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out = {
        "devices": len(devices), "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "mesh": {k: int(v) for k, v in mesh.shape.items()}, "layout": layout,
        "parameters": int(sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))),
        "batch_shape": list(batch["inputs"].shape), "micro_batches": accum,
        "compute_dtype": config.compute_dtype, "head_capacities": capacities,
        "bytes": {"params_global": _global_bytes(abstract.params),
                  "params": bytes_per_device(state.params),
                  "opt_state": bytes_per_device(state.opt_state),
                  "step_and_rng": bytes_per_device((state.step, state.rng)),
                  "batch": bytes_per_device(batch)},
        "compile_seconds": seconds,
        # XLA's count for one device's program (cuBLAS / cuDNN calls are not counted on GPU)
        "flops_per_device": float((cost or {}).get("flops", 0.0)),
    }
    if mem is not None:
        m = {"arguments": int(mem.argument_size_in_bytes),
             "outputs": int(mem.output_size_in_bytes),
             "aliased": int(mem.alias_size_in_bytes),
             "temporaries": int(mem.temp_size_in_bytes),
             "code": int(mem.generated_code_size_in_bytes)}
        # donated state: the outputs reuse the arguments' buffers
        m["peak"] = m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"]
        out["compiled"] = m
    return out


def report_lines(plan: dict, device_memory_gib: float | None = None) -> tuple[list, bool]:
    """Readable lines for a plan, and whether it fits in `device_memory_gib` (True if not given)."""
    b, g = plan["bytes"], lambda n: f"{n / GIB:9.3f}"  # noqa: E731
    mesh = " ".join(f"{k}={v}" for k, v in plan["mesh"].items())
    lines = [f"{plan['devices']} {plan['platform']} devices ({plan['device_kind']}), mesh {mesh}, "
             f"layout {plan['layout']}",
             f"model {plan['parameters'] / 1e9:.3f}B parameters "
             f"({b['params_global'] / GIB:.2f} GiB float32); batch "
             f"{' x '.join(map(str, plan['batch_shape']))} tokens in {plan['micro_batches']} "
             f"micro-batch(es), compute {plan['compute_dtype']}; head capacities "
             f"{plan['head_capacities']}",
             "per device                       GiB",
             f"  parameters               {g(b['params'])}",
             f"  optimizer state          {g(b['opt_state'])}",
             f"  batch                    {g(b['batch'])}"]
    fits = True
    c = plan.get("compiled")
    if c:
        lines += [f"  temporaries (XLA)        {g(c['temporaries'])}",
                  f"  peak (args + outputs - aliased + temporaries) {c['peak'] / GIB:.3f}",
                  f"compiled in {plan['compile_seconds']:.1f} s; XLA counts "
                  f"{plan['flops_per_device'] / 1e9:.2f} GFLOP per device per step"]
        if plan["platform"] == "cpu":
            lines.append("(CPU devices stand in for the target: state and batch are exact, "
                         "temporaries are the CPU compiler's)")
        if device_memory_gib is not None:
            fits = c["peak"] <= device_memory_gib * GIB
            verdict = "fits" if fits else (
                "does NOT fit: shard wider (--config.mesh.fsdp), add micro-batches "
                "(--config.grad_accum_steps), or rematerialise more "
                "(--config.model_options.remat_policy=full)")
            lines.append(f"{c['peak'] / GIB:.2f} of {device_memory_gib:g} GiB per device: "
                         f"{verdict}")
    return lines, fits


# ---------------------------------------------------------------------------------- cli

def sft_args(parser):
    parser.add_argument("--config", default="configs/sft.py:shapes",
                        help="SFT config (plus --config.x=v overrides), as for `jaxgen train sft`")
    parser.add_argument("--devices", default="8",
                        help="N CPU devices standing in for the target, or 'local' (default 8)")
    parser.add_argument("--topology", default=None,
                        help="a TPU topology such as v5e:4x4 (needs libtpu); overrides --devices")
    parser.add_argument("--device-memory-gib", type=float, default=None,
                        help="memory of one target device; exit code 1 if the step needs more")
    parser.add_argument("--text-targets", type=int, default=None,
                        help="most text targets in a row (default: every non-image position)")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON line")


def sft(args) -> int:
    devices = target_devices(args.devices, args.topology)  # before anything starts the backend
    config = load_config(args.config, args.config_overrides)
    plan = plan_sft(config, devices, args.text_targets)
    lines, fits = report_lines(plan, args.device_memory_gib)
    if args.json:
        print(json.dumps(dict(plan, fits=fits)))
    else:
        print("\n".join(lines))
    return 0 if fits else 1
