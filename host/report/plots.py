"""The report's figures, each returned as PNG bytes.

Figures are drawn on `matplotlib.figure.Figure` with an Agg canvas attached inside each function:
no pyplot, no global backend switch, nothing happens at import.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from host.report.load import ModelRow, RunData
from host.runs import EpisodeRow
from lut_store.precision import Precision

BASELINE_COLOUR = "black"
PRECISION_COLOURS = {
    Precision.FP32: "#7f7f7f",
    Precision.FP16: "#17becf",
    Precision.BF16: "#2ca02c",
    Precision.INT8: "#1f77b4",
    Precision.INT4W: "#d62728",
    Precision.FP8: "#ff7f0e",
}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
DPI = 110


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats: none has lower-or-equal
    latency and higher accuracy. Returned by increasing latency; of points with equal latency only
    the most accurate (the first of them on a tie) is on the front; non-finite points never are."""
    finite = [i for i, (lat, acc) in enumerate(points) if math.isfinite(lat) and math.isfinite(acc)]
    order = sorted(finite, key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def running_best(values: Sequence[float]) -> list[float]:
    """The best value so far at each position (NaN until a finite value has been seen)."""
    out, best = [], -math.inf
    for v in values:
        if math.isfinite(v):
            best = max(best, v)
        out.append(best if math.isfinite(best) else math.nan)
    return out


def controller_colours(names: Sequence[str]) -> dict[str, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _figure(width_in: float, height_in: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#555555")
    ax.set_xticks([])
    ax.set_yticks([])


def _by_controller(episodes: Sequence[EpisodeRow], name: str) -> list[EpisodeRow]:
    return sorted((e for e in episodes if e.controller == name), key=lambda e: e.episode)


def accuracy_vs_latency(run: RunData) -> bytes:
    """(a) Validation accuracy vs predicted latency of every evaluated episode, one colour per
    controller, each controller's Pareto front as a step line, the baseline and final models marked."""
    fig = _figure(7.5, 5.0)
    ax = fig.add_subplot()
    colours = controller_colours(run.controllers)
    for name in run.controllers:
        rows = _by_controller(run.episodes, name)
        if not rows:
            continue
        pts = [(e.predicted_latency_ms, 100 * e.val_accuracy) for e in rows]
        ax.scatter(
            [p[0] for p in pts],
            [p[1] for p in pts],
            s=20,
            alpha=0.45,
            color=colours[name],
            label=f"{name}: {len(rows)} episodes",
        )
        front = [pts[i] for i in pareto_front(pts)]
        ax.plot(
            [p[0] for p in front],
            [p[1] for p in front],
            drawstyle="steps-post",
            color=colours[name],
            lw=1.6,
            label=f"{name}: Pareto front",
        )
    for final in run.finals:
        if final.val_accuracy is not None:
            ax.scatter(
                [final.predicted_latency_ms],
                [100 * final.val_accuracy],
                marker="D",
                s=60,
                facecolor="none",
                edgecolor=colours[final.name],
                lw=1.8,
                label=f"{final.name}: final model (full fine-tune)",
            )
    base = run.baseline
    if base.val_accuracy is not None:
        ax.scatter(
            [base.predicted_latency_ms],
            [100 * base.val_accuracy],
            marker="*",
            s=220,
            color=BASELINE_COLOUR,
            zorder=5,
            label="FP32 baseline",
        )
    if not run.episodes and base.val_accuracy is None:
        _empty(ax, "no episodes recorded")
    ax.set_xlabel("predicted latency (ms, from the LUT)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Every evaluated policy, with each controller's Pareto front")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def reward_per_episode(run: RunData) -> bytes:
    """(b) Reward of each episode per controller (dots), the running best (line) and, for PPO
    practising on a surrogate, the surrogate's score of each policy before it was run (crosses)."""
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot()
    colours = controller_colours(run.controllers)
    for name in run.controllers:
        rows = _by_controller(run.episodes, name)
        if not rows:
            continue
        xs, rewards = [e.episode for e in rows], [e.reward for e in rows]
        ax.plot(xs, rewards, "o", ms=4, alpha=0.5, color=colours[name], label=f"{name}: reward")
        ax.plot(
            xs,
            running_best(rewards),
            "-",
            drawstyle="steps-post",
            lw=1.8,
            color=colours[name],
            label=f"{name}: best so far",
        )
        predicted = [(e.episode, e.surrogate_reward) for e in rows if e.surrogate_reward is not None]
        if predicted:
            ax.plot(
                *zip(*predicted, strict=False), "x", ms=5, color=colours[name], label=f"{name}: surrogate's prediction"
            )
    if not run.episodes:
        _empty(ax, "no episodes recorded")
    else:
        ax.set_xlabel("episode")
        ax.set_ylabel("reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    ax.set_title("Reward per episode")
    return _png(fig)


def per_layer_policy(run: RunData) -> bytes:
    """(c) Per-layer policy of each final model: keep-ratio bars per layer, coloured by precision."""
    from matplotlib.patches import Patch

    finals = [f for f in run.finals if f.layers]
    n_layers = max((len(f.layers) for f in finals), default=0)
    fig = _figure(max(7.5, 0.22 * n_layers + 2), 0.6 + 2.3 * max(1, len(finals)))
    if not finals:
        _empty(fig.add_subplot(), "no final models")
        return _png(fig)
    axes = fig.subplots(len(finals), 1, squeeze=False)[:, 0]
    label_size = 7 if n_layers <= 30 else 5
    seen: set[Precision] = set()
    for ax, final in zip(axes, finals, strict=True):
        names = [layer.layer for layer in final.layers]
        seen.update(layer.precision for layer in final.layers)
        ax.bar(
            range(len(names)),
            [layer.keep_ratio for layer in final.layers],
            color=[PRECISION_COLOURS[layer.precision] for layer in final.layers],
            edgecolor="white",
            lw=0.3,
        )
        ax.set_ylim(0, 1.05)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_ylabel("keep-ratio")
        ax.set_title(f"{final.name}", fontsize=9, loc="left")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=90, fontsize=label_size)
        ax.grid(axis="y", alpha=0.3)
    handles = [Patch(color=PRECISION_COLOURS[p], label=str(p)) for p in Precision if p in seen]
    fig.legend(handles=handles, loc="outside upper right", ncol=len(handles), fontsize=8)
    fig.suptitle("Per-layer policy of each final model", fontsize=10, x=0.02, ha="left")
    return _png(fig)


def predicted_vs_measured(run: RunData) -> bytes:
    """(d) Predicted (LUT) vs measured (the device's latency of record, bar to p90) latency of the baseline and the
    final models, with y = x and a +-10% band; models that were not measured are listed."""
    fig = _figure(6.0, 5.6)
    ax = fig.add_subplot()
    colours = {**controller_colours(run.controllers), run.baseline.name: BASELINE_COLOUR}
    rows: list[ModelRow] = [run.baseline, *run.finals]
    # (name, predicted, measured, measured p90 or None) of every model that was measured
    measured = [
        (r.name, r.predicted_latency_ms, r.measured.latency_ms, r.measured.p90_ms)
        for r in rows
        if r.measured.latency_ms is not None
    ]
    missing = [r.name for r in rows if r.measured.latency_ms is None]
    for name, predicted, got_ms, p90 in measured:
        xerr = [[0.0], [max(0.0, p90 - got_ms)]] if p90 is not None else None
        ax.errorbar(
            [got_ms],
            [predicted],
            xerr=xerr,
            fmt="o",
            ms=7,
            capsize=3,
            color=colours.get(name, BASELINE_COLOUR),
            label=name,
        )
        ax.annotate(name, (got_ms, predicted), textcoords="offset points", xytext=(6, 6), fontsize=8)
    if measured:
        hi = 1.15 * max(max(predicted, got_ms, p90 or 0.0) for _, predicted, got_ms, p90 in measured)
        ax.plot([0, hi], [0, hi], color="black", lw=1, label="predicted = measured")
        ax.fill_between([0, hi], [0, 0.9 * hi], [0, 1.1 * hi], color="tab:green", alpha=0.12, label="within 10%")
        ax.set_xlim(0, hi)
        ax.set_ylim(0, hi)
        ax.legend(fontsize=7, loc="upper left")
    else:
        _empty(ax, "no model was measured on the device")
    if missing and measured:
        ax.text(
            0.98,
            0.02,
            "not measured: " + ", ".join(missing),
            ha="right",
            va="bottom",
            transform=ax.transAxes,
            fontsize=8,
            color="#a00000",
        )
    ax.set_xlabel("measured latency on the device (ms; latency of record, bar to p90)")
    ax.set_ylabel("predicted latency from the LUT (ms)")
    ax.set_title("Predicted vs measured latency, batch 1")
    ax.grid(alpha=0.3)
    return _png(fig)


def hirelc_budgets(run: RunData) -> bytes:
    """(e) HiReLC's cycles: each block's target retained-size fraction from the high-level agents
    and the fraction its kernels realized, per cycle; and the effective storage compression and the
    surrogate's mean absolute error by cycle."""
    cycles = [e.hirelc for e in sorted(run.episodes, key=lambda e: e.episode) if e.hirelc is not None]
    blocks = list(cycles[0].block_targets) if cycles else []
    fig = _figure(max(7.5, 0.5 * len(blocks) + 3), 5.6)
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 2))
    if not cycles:
        _empty(top, "no hirelc cycle")
        _empty(bottom, "")
        return _png(fig)
    width = 0.8 / len(cycles)
    for i, cycle in enumerate(cycles):
        x = [b + (i - (len(cycles) - 1) / 2) * width for b in range(len(blocks))]
        colour = _viridis(i, len(cycles))
        top.bar(x, [cycle.block_fractions[b] for b in blocks], width, color=colour, label=f"cycle {cycle.cycle + 1}")
        top.scatter(x, [cycle.block_targets[b] for b in blocks], marker="_", s=120, color="black", zorder=3)
    top.set_xticks(range(len(blocks)))
    top.set_xticklabels(blocks, rotation=60, fontsize=7)
    top.set_ylabel("retained-size fraction")
    top.set_title("Per block: realized fraction (bars) and the high-level target (black)", fontsize=9, loc="left")
    top.legend(fontsize=7, ncol=min(len(cycles), 6))
    top.grid(axis="y", alpha=0.3)
    steps = [c.cycle + 1 for c in cycles]
    bottom.plot(steps, [c.compression_ratio for c in cycles], "o-", color="tab:blue", label="storage compression (x)")
    bottom.set_xlabel("cycle")
    bottom.set_ylabel("compression (x)")
    mae = [(c.cycle + 1, 100 * c.surrogate_mae) for c in cycles if c.surrogate_mae is not None]
    twin = bottom.twinx()
    if mae:
        twin.plot(*zip(*mae, strict=True), "s--", color="tab:red", label="surrogate MAE (points)")
        twin.legend(fontsize=7, loc="upper right")
    twin.set_ylabel("surrogate MAE (accuracy points)")
    bottom.legend(fontsize=7, loc="upper left")
    bottom.grid(alpha=0.3)
    return _png(fig)


def _viridis(i: int, n: int) -> Any:
    """The i-th of n colours along viridis."""
    import matplotlib

    return matplotlib.colormaps["viridis"](i / max(n - 1, 1))


def all_plots(run: RunData) -> dict[str, bytes]:
    """Every figure of the report by file stem, in the order the report shows them (HiReLC's only
    for a run with hirelc cycles)."""
    plots = {
        "accuracy_vs_latency": accuracy_vs_latency(run),
        "reward_per_episode": reward_per_episode(run),
        "per_layer_policy": per_layer_policy(run),
        "predicted_vs_measured": predicted_vs_measured(run),
    }
    if any(e.hirelc is not None for e in run.episodes):
        plots["hirelc_budgets"] = hirelc_budgets(run)
    return plots
