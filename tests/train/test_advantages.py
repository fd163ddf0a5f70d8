"""Every advantage estimator against a NumPy loop over groups, plus dynamic sampling."""

import numpy as np
import pytest

from jaxgen.errors import UserError
from jaxgen.train import advantages as A

REWARDS = np.array([1.0, 0.0, 0.5, 0.5,   # group 0: spread
                    0.3, 0.3, 0.3, 0.3,   # group 1: all equal
                    2.0, -1.0, 0.0, 3.0], np.float32)
G = 4


def _np_groups():
    return [REWARDS[i:i + G] for i in range(0, len(REWARDS), G)]


def test_grpo_matches_numpy_population_std():
    out = np.asarray(A.grpo_advantages(REWARDS, G, eps=1e-4))
    want = np.concatenate([(g - g.mean()) / (g.std() + 1e-4) for g in _np_groups()])
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    # group 0 by hand: mean .5, std sqrt(.125)
    np.testing.assert_allclose(out[0], 0.5 / (np.sqrt(0.125) + 1e-4), rtol=1e-6)
    np.testing.assert_allclose(out[4:8], 0.0, atol=1e-7)


def test_grpo_unbiased_std():
    out = np.asarray(A.grpo_advantages(REWARDS, G, eps=0.0, std_ddof=1))
    g = REWARDS[8:]
    np.testing.assert_allclose(out[8:], (g - g.mean()) / g.std(ddof=1), rtol=1e-6)


def test_rloo_is_leave_one_out():
    out = np.asarray(A.rloo_advantages(REWARDS, G))
    want = []
    for g in _np_groups():
        for i in range(G):
            want.append(g[i] - np.delete(g, i).mean())
    np.testing.assert_allclose(out, np.array(want), rtol=1e-6, atol=1e-6)
    # leave-one-out of group 2, sample 1 by hand: -1 - (2 + 0 + 3)/3
    np.testing.assert_allclose(out[9], -1.0 - 5.0 / 3.0, rtol=1e-6)


def test_mean_centred():
    out = np.asarray(A.mean_centred_advantages(REWARDS, G))
    np.testing.assert_allclose(out[8:], REWARDS[8:] - 1.0, atol=1e-6)


def test_registry_and_errors():
    assert set(A.available()) >= {"grpo", "rloo", "mean_centred"}
    with pytest.raises(UserError, match="unknown advantage estimator 'bogus'"):
        A.get_advantage_fn("bogus")
    with pytest.raises(UserError, match="groups of 5"):
        A.grpo_advantages(REWARDS, 5)
    with pytest.raises(UserError, match="group_size >= 2"):
        A.rloo_advantages(REWARDS, 1)


def test_dynamic_sampling_masks_constant_groups():
    adv, keep, total = A.compute_advantages(REWARDS, G, "mean_centred", dynamic_sampling=True)
    np.testing.assert_array_equal(np.asarray(keep), [1] * 4 + [0] * 4 + [1] * 4)
    np.testing.assert_allclose(np.asarray(total), REWARDS)
    assert np.all(np.asarray(adv)[4:8] == 0)


def test_dynamic_sampling_tolerance_drops_noise_level_groups():
    # a judge that cannot tell samples apart: P(yes) jitters by 1e-3 inside each group
    noisy = np.array([0.536, 0.537, 0.5365, 0.5362, 0.9, 0.1, 0.5, 0.5], np.float32)
    adv, keep, _ = A.compute_advantages(noisy, 4, "grpo", dynamic_sampling=True)
    assert np.asarray(keep).all() and np.abs(np.asarray(adv)[:4]).max() > 0.9  # noise amplified
    adv, keep, _ = A.compute_advantages(noisy, 4, "grpo", dynamic_sampling=True,
                                        dynamic_sampling_tol=0.02)
    np.testing.assert_array_equal(np.asarray(keep), [0] * 4 + [1] * 4)
    assert np.all(np.asarray(adv)[:4] == 0) and np.abs(np.asarray(adv)[4:]).max() > 0.9


def test_per_reward_norm_vs_sum_then_norm():
    rng = np.random.default_rng(0)
    r_bk = rng.normal(size=(8, 2)).astype(np.float32)
    r_bk[:, 1] *= 10.0  # second stream on a larger scale
    w = [1.0, 0.5]
    adv_sep, _, total = A.compute_advantages(r_bk, 4, "grpo", weights=w, per_reward_norm=True)
    adv_sum, _, _ = A.compute_advantages(r_bk, 4, "grpo", weights=w, per_reward_norm=False)

    def norm(x):
        x = x.reshape(-1, 4)
        return ((x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-4)).reshape(-1)

    np.testing.assert_allclose(np.asarray(adv_sep), norm(r_bk[:, 0]) + 0.5 * norm(r_bk[:, 1]),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(adv_sum), norm(r_bk @ np.array(w, np.float32)),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(total), r_bk @ np.array(w, np.float32), rtol=1e-6)
    with pytest.raises(UserError, match="one weight per reward"):
        A.compute_advantages(r_bk, 4, weights=[1.0])


def test_clip():
    adv, _, _ = A.compute_advantages(np.array([0, 0, 0, 100.0]), 4, "mean_centred", clip=5.0)
    np.testing.assert_allclose(np.asarray(adv), [-5, -5, -5, 5])


def test_negative_scale_keeps_positives_and_scales_negatives():
    r = np.array([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 1.0])
    plain, _, _ = A.compute_advantages(r, 4, "mean_centred")
    np.testing.assert_allclose(np.asarray(plain), [0.75, -0.25, -0.25, -0.25, 0, 0, -0.5, 0.5])
    half, _, _ = A.compute_advantages(r, 4, "mean_centred", negative_scale=0.5)
    np.testing.assert_allclose(np.asarray(half), [0.75, -0.125, -0.125, -0.125, 0, 0, -0.25, 0.5])
    pos, _, _ = A.compute_advantages(r, 4, "mean_centred", negative_scale=0.0)
    np.testing.assert_allclose(np.asarray(pos), [0.75, 0, 0, 0, 0, 0, 0, 0.5])
    # applied after clipping: a clipped negative is scaled from the clip value
    clipped, _, _ = A.compute_advantages(np.array([0, 0, 0, 100.0]), 4, "mean_centred",
                                         clip=5.0, negative_scale=0.2)
    np.testing.assert_allclose(np.asarray(clipped), [-1, -1, -1, 5])
    with pytest.raises(UserError, match="negative_advantage_scale"):
        A.compute_advantages(r, 4, "grpo", negative_scale=1.5)
