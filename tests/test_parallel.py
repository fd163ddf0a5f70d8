"""Sharded training on 8 fake CPU devices matches one device; FSDP holds ~1/8 per device.

The multi-device checks run in a subprocess (XLA_FLAGS must be set before jax is imported,
and other test modules of the same pytest run may already have imported it).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from jaxgen import parallel
from jaxgen.errors import UserError
from tests.helpers import REPO_ROOT

# Runs the tiny Janus model's SFT loss for a few AdamW steps on (a) one device, (b) FSDP over
# 8 devices, (c) FSDP 4 x tensor 2, (d) FSDP with 2 gradient-accumulation micro-batches, and
# prints max |param difference| and per-device byte fractions.
SCRIPT = textwrap.dedent("""
    import os, json, time
    from jaxgen.cpu_devices import xla_flags_with_devices
    os.environ["XLA_FLAGS"] = xla_flags_with_devices(8)
    import jax, jax.numpy as jnp, numpy as np
    from jaxgen import parallel
    from jaxgen.config import load_config
    from jaxgen.models import janus
    from jaxgen.train import losses as L, optim, sft, sft_loss, sft_rows, state as st

    config = load_config("sft:tiny", ["--config.data.prompt_dropout=0.0"])
    mc = sft.model_config_for(config)
    opt = optim.make_optimizer(config, total_steps=10)
    rng = np.random.default_rng(0)
    B, L_, n_img = 8, 24, 12
    def janus_batch():
        inputs = rng.integers(0, mc.text.vocab_size - 8, (B, L_)).astype(np.int32)
        is_img = np.zeros((B, L_), bool); is_img[:, L_ - n_img:] = True
        inputs[is_img] = rng.integers(0, mc.vq.num_embeddings, is_img.sum())
        targets = np.roll(inputs, -1, 1); t_img = np.roll(is_img, -1, 1)
        kind = np.where(t_img, sft_rows.KIND_IMAGE, sft_rows.KIND_TEXT).astype(np.int8)
        kind[:, :4] = sft_rows.KIND_NONE
        region = np.zeros((B, L_), np.int8); region[:, 1:4] = 1
        return dict(inputs=inputs, input_is_image=is_img, targets=targets, target_is_image=t_img,
                    target_kind=kind, region=region, valid=np.ones((B, L_), bool))

    # A stand-in MLP LM (cheap to compile) for the accumulation / pure-DP layouts.
    V, D, M = 64, 32, 64
    def mlp_init(r):
        k = jax.random.split(r, 3)
        return {"emb": jax.random.normal(k[0], (V, D)) * 0.1, "norm": jnp.ones((D,)),
                "w1": jax.random.normal(k[1], (D, M)) * 0.1, "head": jax.random.normal(k[2], (D, V)) * 0.1}
    mlp_axes = {"emb": ("vocab", "embed"), "norm": ("norm",), "w1": ("embed", "mlp"), "head": ("embed", "vocab")}
    def mlp_loss(p, b, r):
        h = p["emb"][b["x"]] * p["norm"]
        h = h + jax.nn.gelu(h @ p["w1"]) @ p["w1"].T
        n, d = L.weighted_cross_entropy(h @ p["head"], b["y"], b["w"])
        return n, {"denominator": d, "metrics": {"loss": (n, d)}}
    def mlp_batch():
        return dict(x=rng.integers(0, V, (16, 8)).astype(np.int32),
                    y=rng.integers(0, V, (16, 8)).astype(np.int32), w=rng.random((16, 8)).astype(np.float32))

    # Params are built once on the host and placed per layout (shard_state), so each layout
    # only compiles its train step.
    host_params = {"janus": jax.device_get(janus.init_params(mc, jax.random.PRNGKey(0))),
                   "mlp": jax.device_get(mlp_init(jax.random.PRNGKey(0)))}
    models = {"janus": (None, janus.param_logical_axes(mc),
                        sft_loss.make_loss_fn(mc, config), [janus_batch() for _ in range(2)]),
              "mlp": (mlp_init, mlp_axes, mlp_loss, [mlp_batch() for _ in range(3)])}

    def run(model, sizes, layout, accum=1):
        _, axes, loss_fn, batches = models[model]
        mesh = parallel.make_mesh(sizes, jax.devices()[:int(np.prod(sizes))])
        state, sh = st.shard_state(st.create_state(host_params[model], opt, jax.random.PRNGKey(1)),
                                   mesh, layout, axes)
        step = st.make_train_step(loss_fn, opt, sh, mesh, accum_steps=accum)
        losses = []
        for b in batches:
            state, m = step(state, parallel.shard_batch(b, mesh))
            losses.append(float(m["loss"]))
        return state, losses

    out = {}
    refs = {m: run(m, (1, 1, 1), "fsdp") for m in models}
    for name, model, sizes, layout, accum in [("fsdp8", "janus", (1, 8, 1), "fsdp", 1),
                                              ("fsdp4_tp2", "janus", (1, 4, 2), "fsdp_tp", 1),
                                              ("fsdp8_accum2", "mlp", (1, 8, 1), "fsdp", 2),
                                              ("dp8", "mlp", (8, 1, 1), "dp", 1)]:
        t = time.time()
        s, losses = run(model, sizes, layout, accum)
        ref_state, ref_losses = refs[model]
        diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                   zip(jax.tree.leaves(s.params), jax.tree.leaves(ref_state.params)))
        out[name] = dict(losses=losses, ref_losses=ref_losses, max_param_diff=diff,
                         param_fraction=st.sharded_bytes_fraction(s.params),
                         opt_fraction=st.sharded_bytes_fraction(s.opt_state),
                         n_devices=len(parallel.bytes_per_device(s.params)), seconds=time.time() - t)
    print("RESULT" + json.dumps(out))
    print("TIMES", {k: v["seconds"] for k, v in out.items()})
""")



@pytest.fixture(scope="module")
def sharded_results():
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("name", ["fsdp8", "fsdp4_tp2", "fsdp8_accum2", "dp8"])
def test_sharded_matches_single_device(sharded_results, name):
    r = sharded_results[name]
    assert r["n_devices"] == 8
    # float32 tolerance: only the order of reductions differs between layouts.
    for a, b in zip(r["losses"], r["ref_losses"]):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(b)), (name, r["losses"], r["ref_losses"])
    assert r["max_param_diff"] < 2e-5, (name, r["max_param_diff"])
    # The loss really moved: AdamW steps were taken.
    assert r["ref_losses"][-1] < r["ref_losses"][0]


@pytest.mark.parametrize("name", ["fsdp8", "fsdp4_tp2"])
def test_fsdp_shards_params_and_optimizer_state(sharded_results, name):
    r = sharded_results[name]
    # Each device holds ~1/8 of the bytes (tiny vectors that do not divide stay replicated).
    assert r["param_fraction"] < 1.25 / 8, r
    assert r["opt_fraction"] < 1.25 / 8, r


def test_data_parallel_replicates(sharded_results):
    assert sharded_results["dp8"]["param_fraction"] == pytest.approx(1.0)


# ---------------------------------------------------------------- pure rules, 1 device


def test_mesh_shape_infers_minus_one():
    assert parallel.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
    assert parallel.mesh_shape((1, -1, 1), 8) == (1, 8, 1)


def test_mesh_that_does_not_divide_devices_is_a_clear_error():
    with pytest.raises(UserError, match="does not divide the 8 devices"):
        parallel.mesh_shape({"data": 3, "fsdp": -1, "tensor": 1}, 8)
    with pytest.raises(UserError, match="needs 6 devices but 8 are available"):
        parallel.mesh_shape({"data": 3, "fsdp": 2, "tensor": 1}, 8)
    with pytest.raises(UserError, match="unknown mesh axis"):
        parallel.mesh_shape({"dta": 2}, 8)
    with pytest.raises(UserError, match="at most one axis may be -1"):
        parallel.mesh_shape({"data": -1, "fsdp": -1}, 8)


def test_unknown_layout_is_a_clear_error():
    with pytest.raises(UserError, match="unknown sharding layout 'zero3'"):
        parallel.mesh_from_config({"data": 1, "fsdp": -1, "tensor": 1, "layout": "zero3"})


class _FakeMesh:
    def __init__(self, **shape):
        self.shape = shape


def test_rules_table_maps_logical_axes():
    mesh = _FakeMesh(data=1, fsdp=4, tensor=2)
    P = parallel.P
    assert parallel.logical_to_spec(("embed", "mlp"), (64, 128), mesh, "fsdp_tp") == P("fsdp", "tensor")
    assert parallel.logical_to_spec(("vocab", "embed"), (256, 64), mesh, "fsdp_tp") == P("tensor", "fsdp")
    assert parallel.logical_to_spec(("embed", "mlp"), (64, 128), mesh, "dp") == P()
    fsdp_only = _FakeMesh(data=1, fsdp=4, tensor=1)
    # A dim that does not divide stays whole; the FSDP fallback shards another dim.
    assert parallel.logical_to_spec(("embed", "heads"), (6, 8), fsdp_only, "fsdp") == P(None, "fsdp")
    # Scan axis never sharded by rule; norm vectors fall back to fsdp when divisible.
    assert parallel.logical_to_spec(("layers", "norm"), (3, 64), fsdp_only, "fsdp") == P(None, "fsdp")
    assert parallel.logical_to_spec(("norm",), (6,), fsdp_only, "fsdp") == P()
    # Conv kernels (no tensor rule) use the tensor axis through the fallback too.
    assert parallel.logical_to_spec((None, None, "conv_in", "conv_out"), (3, 3, 32, 64), mesh,
                                    "fsdp_tp") == P(None, None, "tensor", "fsdp")


def test_batch_must_divide_data_parallel_devices():
    mesh = _FakeMesh(data=2, fsdp=4, tensor=1)
    with pytest.raises(UserError, match="batch_size=12 does not divide over the 8"):
        parallel.check_batch_divides(12, mesh)


# The models' activation constraints (`parallel.constrain`) are live only inside
# parallel.activation_sharding; prints the output specs of one jitted function with and without.
CONSTRAINT_SCRIPT = textwrap.dedent("""
    import os, json
    from jaxgen.cpu_devices import xla_flags_with_devices
    os.environ["XLA_FLAGS"] = xla_flags_with_devices(8)
    import jax, jax.numpy as jnp
    from jaxgen import parallel

    mesh = parallel.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    x = jax.device_put(jnp.ones((8, 16, 32)), parallel.replicated(mesh))
    axes = ("activation_batch", "activation_length", "activation_embed")

    def f(x, live):
        if live:
            with parallel.activation_sharding(mesh, "fsdp"):
                return parallel.constrain(x * 2.0, axes)
        return parallel.constrain(x * 2.0, axes)

    out = {}
    for live in (True, False):
        y = jax.jit(f, static_argnums=1)(x, live)
        out[str(live)] = [str(y.sharding.spec), len(y.addressable_shards[0].data)]
    print(json.dumps(out))
""")


def test_activation_constraints_split_the_batch_only_inside_the_context():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", CONSTRAINT_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=300,
                          cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["True"] == ["P(('data', 'fsdp'),)", 1]  # 8 rows over 8 devices
    assert out["False"][1] == 8  # no constraint outside: every device holds all 8 rows
