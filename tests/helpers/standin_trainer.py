"""A small trainer on a stand-in MLP language model, run as a subprocess by the resume tests.

    python -m tests.helpers.standin_trainer WORKDIR TOTAL_STEPS [--nan-at STEP]

Uses the real machinery (TrainState, sharded jitted step, ArrayBatcher, loop.run with
checkpoints and SIGTERM handling) and writes WORKDIR/final_params.npz at the end. Env
STANDIN_STEP_SLEEP (seconds) slows each step so a test can kill it mid-run.
"""

import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgen import parallel
from jaxgen.train import batching, loop, losses, optim, state as st

V, D, M, B, L = 32, 16, 32, 8, 6


def init(r):
    k = jax.random.split(r, 3)
    return {"emb": jax.random.normal(k[0], (V, D)) * 0.3, "w1": jax.random.normal(k[1], (D, M)) * 0.3,
            "head": jax.random.normal(k[2], (D, V)) * 0.3}


def loss_fn(p, b, rng):
    h = p["emb"][b["x"]]
    # Dropout-like noise from the step rng: makes the result depend on the rng being resumed.
    h = h * jax.random.bernoulli(rng, 0.9, h.shape) / 0.9
    h = h + jax.nn.gelu(h @ p["w1"]) @ p["w1"].T
    logits = h @ p["head"] * b["scale"][:, None, None]
    n, d = losses.weighted_cross_entropy(logits, b["y"], jnp.ones_like(b["y"], jnp.float32))
    return n, {"denominator": d, "metrics": {"loss": (n, d)}}


class Slow:
    def __init__(self, it, delay, nan_at):
        self.it, self.delay, self.nan_at, self.count = it, delay, nan_at, 0

    def __next__(self):
        if self.delay:
            time.sleep(self.delay)
        b = dict(next(self.it))
        self.count += 1
        step = self.it.epoch * (self.it.n // B) + self.it.pos // B  # steps taken incl. this one
        b["scale"] = np.full((B,), np.nan if step == self.nan_at else 1.0, np.float32)
        return b

    def get_state(self):
        return self.it.get_state()

    def set_state(self, s):
        self.it.set_state(s)


def main(argv):
    workdir, total = argv[0], int(argv[1])
    nan_at = int(argv[argv.index("--nan-at") + 1]) if "--nan-at" in argv else -1
    config = ml_collections.ConfigDict(dict(
        total_steps=total, optim=dict(learning_rate=3e-2, warmup_steps=2, schedule="cosine",
                                      end_lr_ratio=0.1, b1=0.9, b2=0.95, weight_decay=0.01,
                                      grad_clip_norm=1.0),
        train=dict(log_every=1, ckpt_every=3, keep_checkpoints=2, async_checkpoints=True)))
    rng = np.random.default_rng(0)
    data = {"x": rng.integers(0, V, (40, L)).astype(np.int32)}
    data["y"] = (data["x"] * 7 + 3) % V
    mesh = parallel.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    opt = optim.make_optimizer(config)
    state, sh = st.init_state(init, opt, jax.random.PRNGKey(0), mesh, "fsdp")
    step = st.make_train_step(loss_fn, opt, sh, mesh)
    it = Slow(batching.ArrayBatcher(data, B, seed=3), float(os.environ.get("STANDIN_STEP_SLEEP", 0)),
              nan_at)
    out = loop.run(workdir=workdir, state=state, shardings=sh, train_step=step, data=it, mesh=mesh,
                   loop=loop.LoopConfig.from_config(config), config=config)
    if out["status"] == "done":
        flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
                for path, v in jax.tree_util.tree_flatten_with_path(jax.device_get(out["state"].params))[0]}
        np.savez(pathlib.Path(workdir) / "final_params.npz", **flat)
    print("STATUS", out["status"], out["step"], flush=True)
    return 0


if __name__ == "__main__":
    from jaxgen.errors import UserError
    try:
        sys.exit(main(sys.argv[1:]))
    except UserError as e:
        print(f"jaxgen: error: {e}", file=sys.stderr)
        sys.exit(2)
