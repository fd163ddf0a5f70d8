"""Janus-Pro-R1 self-reflection: stop index, R_Gen and R_Comp on hand-computed cases."""

import numpy as np

from jaxgen.train import reflection as R

SE = np.array([[0.9, 0.1, 0.2],    # says yes at once: K = 1
               [0.2, 0.7, 0.9],    # no, then yes: K = 2
               [0.1, 0.2, 0.3]])   # never yes: K = T = 3
RQA = np.array([[0.8, 0.0, 0.0],
                [0.3, 0.6, 0.0],
                [0.2, 0.4, 0.5]])


def test_stop_index_and_mask():
    k = R.stop_index(SE, 0.5)
    np.testing.assert_array_equal(k, [1, 2, 3])
    np.testing.assert_array_equal(R.active_mask(k, 3), [[1, 0, 0], [1, 1, 0], [1, 1, 1]])


def test_r_gen_by_hand():
    k = R.stop_index(SE)
    # row 0: (3-1+1)*0.8; row 1: 0.3 + (3-2+1)*0.6; row 2: 0.2 + 0.4 + 1*0.5
    np.testing.assert_allclose(R.r_gen(RQA, k), [2.4, 1.5, 1.1], rtol=1e-6)


def test_r_comp_by_hand():
    k = R.stop_index(SE)
    want = [(1 - 0.1) * 3 / 1,
            ((1 - 0.1) + (1 - 0.1)) * 3 / 2,
            ((1 - 0.1) + (1 - 0.2) + (1 - 0.2)) * 3 / 3]
    np.testing.assert_allclose(R.r_comp(RQA, SE, k), want, rtol=1e-6)
