"""Orbax checkpoints: exact round trip (state, data state, meta), keep-N, async saves that
survive donation, a crash mid-save, and a corrupted latest step falling back with a warning."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import checkpoint as ck
from jaxgen import parallel
from jaxgen.errors import CheckpointError
from jaxgen.train import losses, optim, state as st


def _setup():
    def init(r):
        k1, k2 = jax.random.split(r)
        return {"emb": jax.random.normal(k1, (16, 8)), "head": jax.random.normal(k2, (8, 16)),
                "scale": jnp.ones((8,))}

    def loss_fn(p, b, r):
        logits = (p["emb"][b["x"]] * p["scale"]) @ p["head"]
        n, d = losses.weighted_cross_entropy(logits, b["x"], jnp.ones(b["x"].shape))
        return n, {"denominator": d, "metrics": {"loss": (n, d)}}

    cfg = {"optim": {"learning_rate": 1e-2, "warmup_steps": 0, "schedule": "constant"}}
    import ml_collections
    opt = optim.make_optimizer(ml_collections.ConfigDict(cfg), total_steps=10)
    mesh = parallel.make_mesh({"fsdp": -1})
    state, sh = st.init_state(init, opt, jax.random.PRNGKey(0), mesh, "fsdp")
    step = st.make_train_step(loss_fn, opt, sh, mesh)  # donates the state
    batch = parallel.shard_batch({"x": np.arange(8, dtype=np.int32).reshape(2, 4)}, mesh)
    return state, sh, step, batch


def _host(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(_host(a), _host(b)))


def test_async_save_restore_exact_and_keep_n(tmp_path):
    state, sh, step, batch = _setup()
    mngr = ck.CheckpointManager(tmp_path / "ckpt", max_to_keep=2, async_save=True)
    snapshots = {}
    for _ in range(4):
        state, _ = step(state, batch)  # the previous state's buffers are donated here
        s = int(state.step)
        snapshots[s] = jax.device_get(state)
        mngr.save(s, state, data_state={"epoch": 0, "pos": s}, meta={"note": "x"})
    mngr.wait()
    assert mngr.all_steps() == [3, 4]  # keep-N
    restored = mngr.restore_latest(st.abstract_state(state, sh))
    assert restored is not None
    s, rstate, data_state, meta = restored
    assert s == 4 and data_state == {"epoch": 0, "pos": 4} and meta == {"note": "x"}
    assert _equal(rstate, snapshots[4])
    assert rstate.params["emb"].sharding == sh.params["emb"]
    # Step 3 was saved asynchronously and its buffers donated right after: still exact.
    r3, _, _ = mngr.restore(3, st.abstract_state(state, sh))
    assert _equal(r3, snapshots[3])
    mngr.close()


def test_keep_period_keeps_multiples_beside_the_newest(tmp_path):
    state, sh, step, batch = _setup()
    mngr = ck.CheckpointManager(tmp_path / "ckpt", max_to_keep=1, async_save=False,
                                keep_period=2)
    for _ in range(5):
        state, _ = step(state, batch)
        mngr.save(int(state.step), state)
    mngr.wait()
    assert mngr.all_steps() == [2, 4, 5]  # the newest, and every multiple of 2
    mngr.close()


def test_bytes_data_state_round_trip(tmp_path):
    state, sh, _, _ = _setup()
    mngr = ck.CheckpointManager(tmp_path / "ckpt", async_save=False)
    mngr.save(1, state, data_state=b"\x00grain\xff")
    assert mngr.restore_latest(st.abstract_state(state, sh))[2] == b"\x00grain\xff"
    mngr.close()


def test_crash_mid_save_leaves_previous_usable(tmp_path):
    state, sh, step, batch = _setup()
    mngr = ck.CheckpointManager(tmp_path / "ckpt", async_save=False)
    state, _ = step(state, batch)
    good = jax.device_get(state)
    mngr.save(1, state)
    mngr.close()
    # What a process killed mid-save leaves behind: a temporary step directory.
    tmp_step = tmp_path / "ckpt" / "2.orbax-checkpoint-tmp-1234"
    (tmp_step / "state").mkdir(parents=True)
    (tmp_step / "state" / "partial").write_bytes(b"half written")
    mngr = ck.CheckpointManager(tmp_path / "ckpt")
    assert mngr.all_steps() == [1]
    s, rstate, _, _ = mngr.restore_latest(st.abstract_state(state, sh))
    assert s == 1 and _equal(rstate, good)
    mngr.close()


def test_corrupted_latest_falls_back_to_previous_with_warning(tmp_path):
    state, sh, step, batch = _setup()
    mngr = ck.CheckpointManager(tmp_path / "ckpt", max_to_keep=3, async_save=False)
    snaps = {}
    for _ in range(2):
        state, _ = step(state, batch)
        snaps[int(state.step)] = jax.device_get(state)
        mngr.save(int(state.step), state)
    mngr.close()
    # Corrupt every file of the latest step's array store.
    for f in (tmp_path / "ckpt" / "2" / "state").rglob("*"):
        if f.is_file() and "manifest" in f.name:
            f.write_bytes(b"garbage")
    mngr = ck.CheckpointManager(tmp_path / "ckpt")
    with pytest.warns(RuntimeWarning, match="checkpoint step 2 .* could not be read"):
        s, rstate, _, _ = mngr.restore_latest(st.abstract_state(state, sh))
    assert s == 1 and _equal(rstate, snaps[1])
    # The bad step was moved aside, so a resumed run can write step 2 again.
    assert mngr.all_steps() == [1]
    assert (tmp_path / "ckpt_corrupt" / "2").is_dir()
    mngr.close()


def test_require_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ck.require_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint steps"):
        ck.require_checkpoint(tmp_path / "empty")
