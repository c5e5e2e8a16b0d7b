"""Figures of an experiment's results (PNG bytes, Agg canvases as in plots.py): which ones a
study gets follows from its data (model columns, episode curves, a device matrix)."""

from __future__ import annotations

import math

from host.experiment.results import Results
from host.report.plots import PALETTE, _figure, _png, pareto_front

BAR_METRICS = (
    ("test_accuracy", "test accuracy (%)", 100.0),
    ("speedup", "measured speedup over FP32 (x)", 1.0),
    ("compression", "compression (% of FP32 bytes saved)", 100.0),
)


def _label(label: tuple[str, ...]) -> str:
    return " / ".join(label)


def model_bars(results: Results) -> bytes:
    """Test accuracy, measured speedup and compression of every row; error bars: std over seeds."""
    rows = results.rows
    fig = _figure(12.0, 0.9 + 0.32 * len(rows))
    axes = fig.subplots(1, len(BAR_METRICS), sharey=True)
    names = [_label(r.label) for r in rows]
    for k, (ax, (key, title, scale)) in enumerate(zip(axes, BAR_METRICS, strict=True)):
        cells = [r.cells.get(key) for r in rows]
        means = [scale * c.mean if c else math.nan for c in cells]  # not measured: no bar, never 0
        stds = [scale * c.std if c else 0.0 for c in cells]
        ax.barh(range(len(rows)), means, xerr=stds if any(stds) else None, color=PALETTE[k], alpha=0.8, capsize=3)
        for i, c in enumerate(cells):
            if c is None:
                ax.text(0, i, " not measured", va="center", fontsize=7, color="grey")
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        measured = [m for m in means if not math.isnan(m)]
        if key == "test_accuracy" and measured:
            ax.set_xlim(max(0.0, min(measured) - 10.0), 100.0)
    axes[0].set_yticks(range(len(rows)))
    axes[0].set_yticklabels(names, fontsize=8)
    axes[0].invert_yaxis()
    return _png(fig)


def measured_pareto(results: Results) -> bytes:
    """Every row's measured latency against its test accuracy in onnxruntime on the device (mean
    over seeds, bars +-1 std), the rows no other beats joined: the trade-off each method reaches."""
    rows = [
        r for r in results.rows if r.cells.get("latency_ms") and r.cells.get("test_accuracy_onnxruntime") is not None
    ]
    fig = _figure(7.5, 4.8)
    ax = fig.subplots()
    points = [(r.cells["latency_ms"].mean, 100.0 * r.cells["test_accuracy_onnxruntime"].mean) for r in rows]
    for i, (row, (x, y)) in enumerate(zip(rows, points, strict=True)):
        acc = row.cells["test_accuracy_onnxruntime"]
        ax.errorbar(
            x,
            y,
            xerr=row.cells["latency_ms"].std or None,
            yerr=100.0 * acc.std or None,
            fmt="o",
            color=PALETTE[i % len(PALETTE)],
            capsize=3,
            label=_label(row.label),
        )
    front = pareto_front(points)
    if len(front) > 1:
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="grey", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("measured latency on the device (ms, log scale)")
    ax.set_ylabel("test accuracy in onnxruntime (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def episode_curves(results: Results) -> bytes:
    """Reward, best reward so far and validation accuracy per episode of each controller (table
    order): mean over seeds, band +-1 std."""
    from matplotlib.ticker import MaxNLocator

    order = [row.label[0] for row in results.rows]
    names = sorted(
        {key.split("/")[0] for key in results.curves}, key=lambda n: (order.index(n) if n in order else len(order), n)
    )
    fig = _figure(13.0, 4.0)
    panels = (
        ("reward", "reward", 1.0),
        ("best_reward", "best reward so far", 1.0),
        ("val_accuracy", "validation accuracy (%)", 100.0),
    )
    for ax, (metric, title, scale) in zip(fig.subplots(1, len(panels)), panels, strict=True):
        for i, name in enumerate(names):
            curve = results.curves.get(f"{name}/{metric}")
            if curve is None:
                continue
            colour = PALETTE[i % len(PALETTE)]
            xs = range(1, len(curve.mean) + 1)
            mean = [scale * m for m in curve.mean]
            ax.plot(xs, mean, "-o", ms=3, color=colour, label=f"{name} (n={curve.n})")
            ax.fill_between(
                xs,
                [m - scale * s for m, s in zip(mean, curve.std, strict=True)],
                [m + scale * s for m, s in zip(mean, curve.std, strict=True)],
                color=colour,
                alpha=0.15,
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("episode")
        ax.set_title(f"{title}, mean over seeds", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


def device_matrix(results: Results) -> bytes:
    """Speedup over FP32 of each device's policy (rows) measured on each device (columns)."""
    down = list(dict.fromkeys(r.label[0] for r in results.rows))
    across = list(dict.fromkeys(r.label[1] for r in results.rows))
    cells = {r.label: r.cells for r in results.rows}
    fig = _figure(2.5 + 2.2 * len(across), 1.5 + 0.7 * len(down))
    ax = fig.add_subplot()
    grid = [
        [cells[(d, a)]["speedup"].mean if "speedup" in cells.get((d, a), {}) else math.nan for a in across]
        for d in down
    ]
    image = ax.imshow(grid, cmap="YlGn", aspect="auto")
    for i, d in enumerate(down):
        for j, a in enumerate(across):
            if not math.isnan(grid[i][j]):
                ax.text(
                    j,
                    i,
                    f"x{grid[i][j]:.2f}\n{cells[(d, a)]['latency_ms'].mean:.4g} ms",
                    ha="center",
                    va="center",
                    fontsize=8,
                )
    ax.set_xticks(range(len(across)), across, fontsize=8)
    ax.set_yticks(range(len(down)), down, fontsize=8)
    ax.set_xlabel(f"{results.labels[1]} (benchmarked there)")
    ax.set_ylabel(results.labels[0])
    ax.set_title("Measured speedup over FP32 on each device", fontsize=9)
    fig.colorbar(image, ax=ax, label="speedup (x)")
    return _png(fig)


def experiment_plots(results: Results) -> dict[str, bytes]:
    """The figures that fit the results, by file stem."""
    keys = {c.key for c in results.columns}
    plots = {}
    if len(results.labels) == 2 and {"speedup", "latency_ms"} <= keys:
        plots["device_matrix"] = device_matrix(results)
    elif {key for key, _, _ in BAR_METRICS} <= keys:
        plots["model_bars"] = model_bars(results)
        if {"latency_ms", "test_accuracy_onnxruntime"} <= keys:
            plots["measured_pareto"] = measured_pareto(results)
    if results.curves:
        plots["episode_curves"] = episode_curves(results)
    return plots
