"""GRPO loss against an independent per-token NumPy loop: ratio, clipping, KL, aggregation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.errors import UserError
from jaxgen.train import policy_loss as P


def _case(seed=0, b=4, t=3, n=5):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.normal(scale=0.3, size=s).astype(np.float32)
    d = dict(
        tlp=f(b, t) - 1, told=f(b, t) - 1, tref=f(b, t) - 1, tent=np.abs(f(b, t)),
        ilp=f(b, n) - 2, iold=f(b, n) - 2, iref=f(b, n) - 2, ient=np.abs(f(b, n)),
        tmask=(rng.random((b, t)) > 0.3).astype(np.float32),
        imask=np.ones((b, n), np.float32), adv=rng.normal(size=b).astype(np.float32),
        keep=np.array([1, 1, 0, 1], np.float32)[:b])
    d["tmask"][0] = 0  # a sample without reasoning tokens
    return d


def _numpy_loss(d, eps_low, eps_high, beta, how, wt, wi, ct, ci):
    """Token-by-token reference written with Python loops. d['adv'] / d['keep'] hold one value
    per sample, or a (text, image) pair of them."""
    pair = lambda x: x if isinstance(x, tuple) else (x, x)
    adv = dict(zip("ti", pair(d["adv"])))
    keep = dict(zip("ti", pair(d["keep"])))
    b = adv["t"].shape[0]
    rows = []  # per sample: list of (loss_token, weight)
    ents = {"t": [], "i": []}
    for s in range(b):
        toks, et, ei = [], [], []
        for kind, lp, old, ref, ent, m, w in (
                ("t", d["tlp"], d["told"], d["tref"], d["tent"], d["tmask"], wt),
                ("i", d["ilp"], d["iold"], d["iref"], d["ient"], d["imask"], wi)):
            for j in range(lp.shape[1]):
                if m[s, j] * keep[kind][s] == 0:
                    continue
                ratio = np.exp(lp[s, j] - old[s, j])
                a = adv[kind][s]
                pg = -min(ratio * a, min(max(ratio, 1 - eps_low), 1 + eps_high) * a)
                dd = ref[s, j] - lp[s, j]
                kl = np.exp(dd) - dd - 1
                toks.append(w * (pg + beta * kl))
                (et if kind == "t" else ei).append(ent[s, j])
        rows.append(toks)
        ents["t"].append(et)
        ents["i"].append(ei)

    def agg(rs):
        if how == "token_mean":
            flat = [x for r in rs for x in r]
            return sum(flat) / max(len(flat), 1)
        per = [sum(r) / len(r) for r in rs if r]
        return sum(per) / max(len(per), 1)

    return agg(rows) - ct * agg(ents["t"]) - ci * agg(ents["i"])


@pytest.mark.parametrize("how", ["token_mean", "sequence_mean"])
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_loss_matches_numpy(how, beta):
    d = _case()
    # old log-probs far from new so that both clip sides trigger
    d["told"] = d["tlp"] + np.array([[0.5, -0.5, 0.0]] * 4, np.float32)
    cfg = P.LossConfig(eps_low=0.2, eps_high=0.28, beta=beta, aggregation=how,
                       text_weight=2.0, image_weight=1.0)
    text = P.TokenBatch(d["tlp"], d["told"], d["tmask"], d["tref"], d["tent"])
    image = P.TokenBatch(d["ilp"], d["iold"], d["imask"], d["iref"], d["ient"])
    loss, metrics = jax.jit(P.grpo_loss, static_argnums=4)(
        text, image, d["adv"], d["keep"], cfg, 0.01, 0.002)
    want = _numpy_loss(d, 0.2, 0.28, beta, how, 2.0, 1.0, 0.01, 0.002)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6)
    assert ("kl" in metrics) == (beta > 0)
    assert float(metrics["clip_frac_low"]) + float(metrics["clip_frac_high"]) > 0


@pytest.mark.parametrize("how", ["token_mean", "sequence_mean"])
def test_per_stream_advantages_match_numpy(how):
    """A (text, image) pair of advantages and keep weights: reasoning tokens follow the first,
    image tokens the second (a plan reward for the plan, a drawing reward for the drawing)."""
    d = _case(2)
    d["told"] = d["tlp"] + np.array([[0.5, -0.5, 0.0]] * 4, np.float32)
    rng = np.random.default_rng(5)
    d["adv"] = (rng.normal(size=4).astype(np.float32), d["adv"])
    d["keep"] = (np.array([1, 0, 1, 1], np.float32), d["keep"])
    cfg = P.LossConfig(eps_low=0.2, eps_high=0.28, aggregation=how, text_weight=2.0)
    text = P.TokenBatch(d["tlp"], d["told"], d["tmask"], d["tref"], d["tent"])
    image = P.TokenBatch(d["ilp"], d["iold"], d["imask"], d["iref"], d["ient"])
    loss, _ = jax.jit(P.grpo_loss, static_argnums=4)(text, image, d["adv"], d["keep"], cfg,
                                                      0.01, 0.002)
    want = _numpy_loss(d, 0.2, 0.28, 0.0, how, 2.0, 1.0, 0.01, 0.002)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6)
    shared, _ = P.grpo_loss(text, image, d["adv"][1], d["keep"][1], cfg, 0.01, 0.002)
    assert abs(float(shared) - want) > 1e-3  # the text stream's own advantages matter


def test_gradient_at_ratio_one_is_advantage_weighted_logprob_gradient():
    # at logp == old the clipped loss has gradient -A / count per token (token mean)
    d = _case(1)
    cfg = P.LossConfig(aggregation="token_mean")
    keep = np.ones(4, np.float32)

    def f(tlp, ilp):
        text = P.TokenBatch(tlp, jax.lax.stop_gradient(tlp), d["tmask"])
        image = P.TokenBatch(ilp, jax.lax.stop_gradient(ilp), d["imask"])
        return P.grpo_loss(text, image, d["adv"], keep, cfg)[0]

    gt, gi = jax.grad(f, argnums=(0, 1))(d["tlp"], d["ilp"])
    count = d["tmask"].sum() + d["imask"].sum()
    np.testing.assert_allclose(np.asarray(gi), -d["adv"][:, None] * d["imask"] / count, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(gt), -d["adv"][:, None] * d["tmask"] / count, rtol=1e-6)


def test_k3_kl_is_nonnegative_and_zero_at_equality():
    lp = jnp.linspace(-3, 0, 7)
    np.testing.assert_allclose(np.asarray(P.k3_kl(lp, lp)), 0.0, atol=1e-7)
    assert np.all(np.asarray(P.k3_kl(lp, lp[::-1])) >= 0)
    np.testing.assert_allclose(float(P.k3_kl(jnp.float32(-1.0), jnp.float32(-2.0))),
                               np.exp(-1.0) + 1.0 - 1.0, rtol=1e-6)


def test_adaptive_entropy():
    psi = jnp.float32(0.0)
    # entropy below target: psi (and the coefficient) goes up
    up = P.adaptive_entropy_update(psi, entropy=1.0, target=2.0, lr=5e-5)
    np.testing.assert_allclose(float(up), 5e-5, rtol=1e-6)
    down = P.adaptive_entropy_update(jnp.float32(0.1), entropy=8.0, target=7.0, lr=0.01)
    np.testing.assert_allclose(float(down), 0.1 - 0.01 * np.cosh(0.1), rtol=1e-6)
    np.testing.assert_allclose(float(P.adaptive_entropy_coef(jnp.float32(3.0), 5e-3)), 5e-3)
    np.testing.assert_allclose(float(P.adaptive_entropy_coef(jnp.float32(1e-3), 5e-3)),
                               np.sinh(1e-3), rtol=1e-6)


def test_config_errors():
    with pytest.raises(UserError, match="unknown loss aggregation"):
        P.LossConfig(aggregation="sum")
    d = _case()
    text = P.TokenBatch(d["tlp"], d["told"], d["tmask"])
    image = P.TokenBatch(d["ilp"], d["iold"], d["imask"])
    with pytest.raises(UserError, match="reference log-probs"):
        P.grpo_loss(text, image, d["adv"], d["keep"], P.LossConfig(beta=0.1))
