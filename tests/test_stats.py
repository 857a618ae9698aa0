"""Bootstrap intervals against hand-checkable cases and a loop reference."""

import numpy as np

from eval.stats import bootstrap_ci, paired_bootstrap_ci, separated


def test_constant_values_give_a_point_interval():
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)


def test_single_and_empty():
    assert bootstrap_ci([2.0]) == (2.0, 2.0, 2.0)
    assert all(np.isnan(x) for x in bootstrap_ci([]))


def test_matches_a_loop_reference():
    values = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(values), size=(2000, len(values)))
    means = sorted(sum(values[i] for i in row) / len(values) for row in picks)
    mean, low, high = bootstrap_ci(values)
    assert mean == 5 / 8
    assert np.isclose(low, np.percentile(means, 2.5)) and np.isclose(high, np.percentile(means, 97.5))
    assert low < mean < high


def test_paired_difference_cancels_shared_spread():
    a = [10.0, 20.0, 30.0, 40.0]
    b = [9.0, 19.0, 29.0, 39.0]
    assert paired_bootstrap_ci(a, b) == (1.0, 1.0, 1.0)
    assert separated(*paired_bootstrap_ci(a, b)[1:])
    assert not separated(-0.1, 0.2)
