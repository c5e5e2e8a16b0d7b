"""An experiment's results as typed records: each seed's table rows and episode curves, and the
table over seeds (mean +- sample std and a 95% bootstrap interval per cell, paired tests of the
study's own method against every other row), with its markdown form.

A row's label is one value per label column (e.g. ("AMC-style (amc)",) or (policy device,
measured device)); its values are named metrics whose units the study's columns give.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from host.experiment.stats import PairedTest, mean_ci95, paired_test
from host.runs import Alternative, Baseline, FinalModel

# How a unit shows a value: (scale, format, suffix).
UNITS: dict[str, tuple[float, str, str]] = {
    "%": (100.0, ".2f", "%"),  # a fraction
    "x": (1.0, ".2f", "x"),  # a ratio
    "ms": (1.0, ".4g", ""),
    "MB": (1e-6, ".3f", ""),  # bytes shown in 10^6
    "M": (1e-6, ".3f", "M"),  # a count shown in millions
    "": (1.0, ".4f", ""),
    "#": (1.0, ".1f", ""),  # a count or index (a mean over seeds may be fractional)
}


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    unit: str = ""

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"column {self.key}: unit {self.unit!r}; choose among {list(UNITS)}")


@dataclass(frozen=True)
class ModelMetrics:
    """One model as the Table-2-style rows show it; accuracy on the test split, latency measured
    on the device at batch 1 (median), speedup over the FP32 model measured in the same session.
    None: not measured (the row then lacks that metric)."""

    test_accuracy: float | None  # None: no torch model (onnxruntime's quantizer made it)
    test_accuracy_onnxruntime: float | None
    params: int
    params_reduction: float
    fp32_size_bytes: int
    effective_size_bytes: int | None
    compression: float | None
    latency_ms: float | None
    speedup: float | None
    file_bytes: int | None = None  # the exported ONNX file
    teacher_agreement: float | None = None  # share of test inputs where it predicts the teacher's class
    macro_f1: float | None = None
    storage_compression_ratio: float | None = None  # HiReLC's CR (host/compress/size.py)

    @classmethod
    def of_baseline(cls, b: Baseline) -> ModelMetrics:
        """The FP32 baseline of a search run."""
        latency = b.measured_latency.record_ms if b.measured_latency else None
        return cls(
            b.test_accuracy,
            b.test_accuracy_onnxruntime,
            b.params,
            0.0,
            b.fp32_size_bytes,
            b.fp32_size_bytes,
            0.0,
            latency,
            1.0 if latency is not None else None,
            b.file_bytes,
        )

    @classmethod
    def of_alternative(cls, a: Alternative, baseline_params: int) -> ModelMetrics:
        """A one-command baseline of a search run (its effective size is not accounted)."""
        return cls(
            None,
            a.test_accuracy_onnxruntime,
            a.params,
            1 - a.params / baseline_params,
            4 * a.params,
            None,
            None,
            a.measured_latency.record_ms,
            a.speedup,
            a.file_bytes,
            a.agreement.teacher_agreement,
            a.agreement.macro_f1,
        )

    @classmethod
    def of_final(cls, m: FinalModel) -> ModelMetrics:
        """A final model: a search controller's, or a compress run's."""
        return cls(
            m.test_accuracy,
            m.test_accuracy_onnxruntime,
            m.params,
            m.params_reduction,
            m.fp32_size_bytes,
            m.effective_size_bytes,
            m.compression,
            m.measured_latency.record_ms if m.measured_latency else None,
            m.speedup,
            m.file_bytes,
            m.agreement.teacher_agreement if m.agreement else None,
            m.agreement.macro_f1 if m.agreement else None,
            m.storage_compression_ratio,
        )

    def values(self) -> dict[str, float]:
        return {k: float(v) for k, v in vars(self).items() if v is not None}


MODEL_COLUMNS = (
    Column("test_accuracy", "test accuracy (torch)", "%"),
    Column("test_accuracy_onnxruntime", "test accuracy (onnxruntime on the device)", "%"),
    Column("params", "parameters", "M"),
    Column("params_reduction", "parameter reduction", "%"),
    Column("fp32_size_bytes", "FP32 size (MB)", "MB"),
    Column("effective_size_bytes", "effective size (MB)", "MB"),
    Column("file_bytes", "ONNX file (MB)", "MB"),
    Column("compression", "compression", "%"),
    Column("latency_ms", "measured latency (ms)", "ms"),
    Column("speedup", "speedup", "x"),
    Column("teacher_agreement", "agrees with the teacher (test)", "%"),
    Column("macro_f1", "macro F1 (test)"),
)


@dataclass(frozen=True)
class Row:
    """One table row of one seed."""

    label: tuple[str, ...]
    values: Mapping[str, float]


@dataclass(frozen=True)
class SeedResult:
    """What one seed of a study produced."""

    seed: int
    rows: tuple[Row, ...]
    curves: Mapping[str, tuple[float, ...]]  # per-episode series by name, e.g. "ppo/reward"
    runs: tuple[str, ...]  # search run directories, relative to the experiment's, each with report.html


@dataclass(frozen=True)
class Cell:
    """One metric over seeds: mean, sample standard deviation (0 with one seed) and the 95%
    bootstrap interval of the mean (None with one seed)."""

    mean: float
    std: float
    n: int
    ci95_low: float | None = None
    ci95_high: float | None = None

    @classmethod
    def of(cls, values: Sequence[float]) -> Cell:
        ci = mean_ci95(values)
        return cls(
            statistics.fmean(values),
            statistics.stdev(values) if len(values) > 1 else 0.0,
            len(values),
            ci.low if ci else None,
            ci.high if ci else None,
        )

    def text(self, unit: str) -> str:
        scale, spec, suffix = UNITS[unit]
        if not math.isfinite(self.mean):
            return str(self.mean)
        # A whole count (one seed, or a whole mean) shows no decimals.
        mean_spec = ".0f" if unit == "#" and self.mean.is_integer() else spec
        mean = format(self.mean * scale, mean_spec) + suffix
        if self.n < 2:
            return mean
        text = f"{mean} ± {format(self.std * scale, spec)}"
        if self.ci95_low is None or self.ci95_high is None:
            return text
        return text + f" [{format(self.ci95_low * scale, spec)}, {format(self.ci95_high * scale, spec)}]"


@dataclass(frozen=True)
class TableRow:
    label: tuple[str, ...]
    cells: Mapping[str, Cell]  # a metric some seed lacks is absent


@dataclass(frozen=True)
class Curve:
    """A per-episode series over seeds."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    n: int


@dataclass(frozen=True)
class Results:
    """A finished experiment: the study's table over seeds, its curves and the runs behind them."""

    study: str
    title: str
    rows_doc: str  # what each row means
    labels: tuple[str, ...]
    columns: tuple[Column, ...]
    seeds: tuple[int, ...]
    rows: tuple[TableRow, ...]
    curves: Mapping[str, Curve]
    runs: tuple[str, ...]
    reference: tuple[str, ...] | None = None  # the study's own method, tested against every other row
    tests: tuple[PairedTest, ...] = ()

    @classmethod
    def aggregate(
        cls,
        study: str,
        title: str,
        rows_doc: str,
        labels: Sequence[str],
        columns: Sequence[Column],
        seeds: Sequence[SeedResult],
        reference: tuple[str, ...] | None = None,
        tested: Sequence[str] = (),
    ) -> Results:
        """Rows in first-seen order; each cell over the seeds that have it. Two rows of one seed
        with one label would pool different things into one cell: that is an error. With a
        `reference` row, each `tested` metric of every other row is compared with it, paired by seed."""
        by_label: dict[tuple[str, ...], dict[str, dict[int, float]]] = {}
        for result in seeds:
            seen = [row.label for row in result.rows]
            if len(set(seen)) != len(seen):
                twice = sorted({" / ".join(label) for label in seen if seen.count(label) > 1})
                raise ValueError(
                    f"seed {result.seed} has several rows labelled {twice}: give the cases "
                    "distinct names (data sets, paths or models)"
                )
            for row in result.rows:
                metrics = by_label.setdefault(row.label, {})
                for key, value in row.values.items():
                    metrics.setdefault(key, {})[result.seed] = value
        rows = tuple(
            TableRow(label, {k: Cell.of(list(v.values())) for k, v in metrics.items()})
            for label, metrics in by_label.items()
        )
        series: dict[str, list[tuple[float, ...]]] = {}
        for result in seeds:
            for name, values in result.curves.items():
                series.setdefault(name, []).append(values)
        curves = {}
        for name, runs in series.items():
            points = [[r[i] for r in runs] for i in range(min(len(r) for r in runs))]
            curves[name] = Curve(
                tuple(statistics.fmean(p) for p in points),
                tuple(statistics.stdev(p) if len(p) > 1 else 0.0 for p in points),
                len(runs),
            )
        return cls(
            study,
            title,
            rows_doc,
            tuple(labels),
            tuple(columns),
            tuple(r.seed for r in seeds),
            rows,
            curves,
            tuple(run for r in seeds for run in r.runs),
            reference,
            _paired_tests(by_label, reference, tested),
        )

    def cell_text(self, row: TableRow, column: Column) -> str:
        """'not measured' where no seed has the metric; '(n=k)' where only k of the seeds have it."""
        cell = row.cells.get(column.key)
        if cell is None:
            return "not measured"
        return cell.text(column.unit) + (f" (n={cell.n})" if cell.n != len(self.seeds) else "")

    def markdown(self) -> str:
        """The table, mean +- sample std [95% bootstrap interval] over the seeds when there are several."""
        head = [*self.labels, *(c.title for c in self.columns)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.rows:
            lines.append("| " + " | ".join([*row.label, *(self.cell_text(row, c) for c in self.columns)]) + " |")
        return "\n".join(lines)

    def matrix_markdown(self, key: str) -> str:
        """A two-label table as a matrix of one metric: first label down, second across."""
        column = next(c for c in self.columns if c.key == key)
        down = list(dict.fromkeys(r.label[0] for r in self.rows))
        across = list(dict.fromkeys(r.label[1] for r in self.rows))
        cells = {r.label: r.cells.get(key) for r in self.rows}
        lines = [
            f"| {self.labels[0]} \\ {self.labels[1]} | " + " | ".join(across) + " |",
            "|" + "---|" * (len(across) + 1),
        ]
        for d in down:
            texts = [cells[(d, a)].text(column.unit) if cells.get((d, a)) else "not measured" for a in across]
            lines.append(f"| {d} | " + " | ".join(texts) + " |")
        return "\n".join(lines)

    def tests_table(self) -> tuple[list[str], list[list[str]]]:
        """The paired tests as a head and rows of text: a compared row each, a tested metric a column."""
        columns = {c.key: c for c in self.columns}
        keys = list(dict.fromkeys(t.metric for t in self.tests))
        by_row: dict[tuple[str, ...], dict[str, PairedTest]] = {}
        for t in self.tests:
            by_row.setdefault(t.b, {})[t.metric] = t
        head = [" / ".join(self.labels), *(columns[k].title for k in keys)]
        rows = [
            [
                " / ".join(label),
                *(t[k].text(UNITS[columns[k].unit][0]) if k in t else "not paired" for k in keys),
            ]
            for label, t in by_row.items()
        ]
        return head, rows

    def tests_markdown(self) -> str:
        """The paired tests as a markdown table (see `tests_table`); each cell is the reference minus the row."""
        head, rows = self.tests_table()
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])

    def seeds_text(self) -> str:
        n = len(self.seeds)
        if n == 1:
            return "1 seed"
        seeds = ", ".join(map(str, self.seeds))
        return f"{n} seeds ({seeds}); cells are mean ± sample std [95% bootstrap interval of the mean]"


def _paired_tests(
    by_label: Mapping[tuple[str, ...], Mapping[str, Mapping[int, float]]],
    reference: tuple[str, ...] | None,
    tested: Sequence[str],
) -> tuple[PairedTest, ...]:
    """`reference` against every other row on each `tested` metric, over the seeds both have."""
    if reference is None or reference not in by_label:
        return ()
    ours = by_label[reference]
    tests = []
    for label, metrics in by_label.items():
        if label == reference:
            continue
        for key in tested:
            a, b = ours.get(key, {}), metrics.get(key, {})
            test = paired_test(key, reference, label, [(a[s], b[s]) for s in sorted(a.keys() & b.keys())])
            if test is not None:
                tests.append(test)
    return tuple(tests)
