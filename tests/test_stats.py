"""Statistics over seeds: bootstrap intervals of a mean and paired permutation tests, and how
experiment tables carry them."""

import pytest

from host.experiment.results import Column, Results, Row, SeedResult
from host.experiment.stats import mean_ci95, paired_test


def test_bootstrap_interval_holds_the_mean_and_narrows_with_agreement():
    wide = mean_ci95([1.0, 2.0, 3.0, 4.0, 9.0])
    narrow = mean_ci95([3.7, 3.8, 3.8, 3.9, 3.8])
    assert wide.low < 3.8 < wide.high and narrow.low < 3.8 < narrow.high
    assert narrow.high - narrow.low < (wide.high - wide.low) / 10
    assert mean_ci95([1.0, 2.0, 3.0]) == mean_ci95([1.0, 2.0, 3.0])  # seeded: the same table twice
    assert mean_ci95([2.5, 2.5]).low == 2.5
    assert mean_ci95([2.5]) is None and mean_ci95([1.0, float("nan")]) is None


def test_paired_test_is_exact_and_says_how_small_p_can_be():
    five_wins = paired_test("speedup", ("a",), ("b",), [(10, 5), (11, 5), (12, 6), (9, 5), (10, 4)])
    assert five_wins.p_value == pytest.approx(2 / 32) and five_wins.min_p == pytest.approx(2 / 32)
    assert five_wins.mean_difference == pytest.approx(5.4)
    mixed = paired_test("speedup", ("a",), ("b",), [(10, 5), (1, 5), (12, 6), (9, 5), (10, 14)])
    assert mixed.p_value > 0.3
    two = paired_test("speedup", ("a",), ("b",), [(10, 5), (11, 5)])
    assert two.p_value == two.min_p == 0.5  # two seeds can never show significance
    assert paired_test("x", ("a",), ("b",), [(1, 1), (2, 2)]).p_value == 1.0
    assert paired_test("x", ("a",), ("b",), [(1, 2)]) is None
    assert "p = 0.0625, n = 5" in five_wins.text()


def test_results_pair_the_reference_with_every_row_by_seed():
    columns = (Column("speedup", "speedup", "x"), Column("acc", "accuracy", "%"))

    def seed(s: int, ours: float, theirs: float, third: float | None) -> SeedResult:
        rows = [Row(("ours",), {"speedup": ours, "acc": 0.9}), Row(("theirs",), {"speedup": theirs})]
        if third is not None:
            rows.append(Row(("third",), {"speedup": third}))
        return SeedResult(s, tuple(rows), {}, ())

    seeds = [seed(0, 10.0, 5.0, 1.0), seed(1, 12.0, 6.0, None), seed(2, 11.0, 4.0, 2.0)]
    results = Results.aggregate("s", "t", "d", ("method",), columns, seeds, ("ours",), ("speedup", "acc"))
    tests = {(t.b, t.metric): t for t in results.tests}
    assert set(tests) == {(("theirs",), "speedup"), (("third",), "speedup")}  # nobody else has acc
    assert tests[(("theirs",), "speedup")].n == 3 and tests[(("theirs",), "speedup")].mean_difference == 6.0
    assert tests[(("third",), "speedup")].n == 2  # paired over the seeds both have
    assert tests[(("third",), "speedup")].mean_difference == pytest.approx(9.0)
    cell = next(r for r in results.rows if r.label == ("ours",)).cells["speedup"]
    assert cell.ci95_low <= 11.0 <= cell.ci95_high
    markdown = results.tests_markdown()
    assert "| theirs | +6 (p = 0.25, n = 3, smallest possible p 0.25) |" in markdown
    assert Results.aggregate("s", "t", "d", ("method",), columns, seeds).tests == ()
