import math
import subprocess
import sys
import time

import numpy as np
import pytest

from device_agent.jobs import Settings
from device_agent.measure import InterferenceError, MeasurementCancelled, measure, median_rel_ci95


def settings(**kw):
    base = dict(
        warmup_runs=2,
        min_runs=20,
        max_runs=400,
        max_time_s=2.0,
        target_rel_ci=0.02,
        max_attempts=2,
        interference_max_cores=64.0,
        min_window_s=0.0,
    )
    base.update(kw)
    return Settings(**base)


def test_median_ci_in_closed_form():
    # 100 evenly spaced samples 1..100: ranks 50 -+ 9.8 -> sorted[39] = 40 and sorted[59] = 60.
    x = np.arange(1, 101, dtype=float)
    assert median_rel_ci95(x) == pytest.approx((60 - 40) / (2 * 50.5))
    assert median_rel_ci95(np.full(50, 3.0)) == 0.0


def test_measure_reports_consistent_stats_of_a_known_duration():
    stats = measure(lambda: time.sleep(0.002), settings(), (), lambda: False)
    assert stats.n >= 20
    assert 2.0 <= stats.median_ms < 20.0
    assert stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.attempts == 1 and stats.settings.min_runs == 20
    assert stats.stable == (stats.rel_ci95 <= 0.02)


def test_time_cap_reports_an_unstable_median():
    rng = np.random.default_rng(0)
    noisy = lambda: time.sleep(float(rng.choice([0.0005, 0.004])))  # noqa: E731
    stats = measure(noisy, settings(max_time_s=0.2, target_rel_ci=0.0001), (), lambda: False)
    assert not stats.stable
    assert stats.rel_ci95 > 0.0001 and math.isfinite(stats.rel_ci95)


def test_min_window_holds_a_fast_kernel_long_enough_to_judge_interference():
    t0 = time.perf_counter()
    stats = measure(lambda: None, settings(min_window_s=0.2, target_rel_ci=0.5, max_runs=10**7), (), lambda: False)
    assert time.perf_counter() - t0 >= 0.2
    assert stats.stable and stats.n > 1000 and stats.settings.min_window_s == 0.2


def test_cancellation_stops_between_runs():
    with pytest.raises(MeasurementCancelled):
        measure(lambda: None, settings(), (), lambda: True)


def test_a_busy_neighbour_is_detected_and_never_reported():
    hog = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<20: pass"])
    try:
        time.sleep(0.3)
        with pytest.raises(InterferenceError, match="busy in all 2 measurement windows"):
            measure(
                lambda: time.sleep(0.001),
                settings(interference_max_cores=0.5, max_time_s=0.3, target_rel_ci=1e-6),
                (),
                lambda: False,
            )
    finally:
        hog.kill()
        hog.wait()
