import pytest

from bench.instruments.stats import Measurement


def test_median_iqr_and_step_time_by_hand():
    # 10 steps of 100 examples per repeat: 1000 examples in each repeat's time
    m = Measurement((0.5, 0.4, 0.5, 0.25, 0.5), steps_per_repeat=10, examples_per_step=100)
    assert m.examples_per_s == [2000, 2500, 2000, 4000, 2000]
    assert m.examples_per_s_median == 2000
    # inclusive quartiles of 2000, 2000, 2000, 2500, 4000
    assert m.examples_per_s_iqr == 500
    assert m.step_ms_median == pytest.approx(50.0)
    assert m.noisy


def test_tight_repeats_are_not_noisy():
    m = Measurement((1.0, 1.01, 0.99, 1.0, 1.0), steps_per_repeat=1, examples_per_step=1000)
    assert m.examples_per_s_median == 1000
    assert not m.noisy
