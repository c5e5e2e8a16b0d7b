"""The report of one search run: the summary table in the style of the paper's Table 2, accuracy
vs latency of every evaluated policy (Pareto front per controller), reward per episode, the
per-layer policy of each final model, predicted vs measured latency, device and LUT versions.
Everything is recomputed from the run directory; images are embedded, so the file stands alone.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLOURS = {"ppo": "tab:blue", "random": "tab:orange", "uniform": "tab:green"}
BITS_COLOURS = {32: "tab:gray", 16: "tab:cyan", 8: "tab:blue", 4: "tab:red"}


class ReportError(ValueError):
    """A run directory the report cannot be built from; the message names the file."""


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (latency, accuracy) no other point beats on both (lower latency,
    higher accuracy), by increasing latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _load(run: Path) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    try:
        summary = json.loads((run / "summary.json").read_text())
    except FileNotFoundError:
        raise ReportError(f"{run / 'summary.json'} is missing: the search has not finished (hadmc search --resume)") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{run / 'summary.json'} is not JSON: {exc}") from None
    rows, torn = [], 0
    try:
        lines = (run / "episodes.jsonl").read_text().splitlines()
    except FileNotFoundError:
        raise ReportError(f"{run / 'episodes.jsonl'} is missing") from None
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            torn += 1
    return summary, rows, torn


def _png(fig: Any) -> bytes:
    """The figure as PNG bytes (laid out, then closed)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _plots(summary: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    base = summary["baseline"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name in summary["controllers"]:
        pts = [(r["predicted_latency_ms"], r["val_accuracy"]) for r in rows if r["controller"] == name]
        colour = COLOURS.get(name)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, alpha=0.6, color=colour, label=name)
        front = [pts[i] for i in pareto_front(pts)]
        ax.plot([p[0] for p in front], [p[1] for p in front], color=colour, lw=1.5)
    ax.scatter([base["predicted_latency_ms"]], [base["val_accuracy"]], marker="*", s=150, color="black",
               label="FP32 baseline")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("validation accuracy after the episode's fine-tune")
    ax.set_title("every evaluated policy, with each controller's Pareto front")
    ax.legend(fontsize=8)
    out["pareto"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in summary["controllers"]:
        rs = sorted((r for r in rows if r["controller"] == name), key=lambda r: r["episode"])
        rewards = [r["reward"] for r in rs]
        running = [max(rewards[: i + 1]) for i in range(len(rewards))]
        ax.plot([r["episode"] for r in rs], rewards, "o", ms=3, color=COLOURS.get(name), alpha=0.5)
        ax.plot([r["episode"] for r in rs], running, "-", color=COLOURS.get(name), label=f"{name} (best so far)")
    ax.set_xlabel("episode")
    ax.set_ylabel("reward")
    ax.legend(fontsize=8)
    out["reward"] = _png(fig)

    names = list(summary["controllers"])
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.2 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        layers = summary["controllers"][name]["policy"]["layers"]
        keys = list(layers)
        ax.bar(range(len(keys)), [layers[k]["keep_ratio"] for k in keys],
               color=[BITS_COLOURS.get(layers[k]["bits"], "black") for k in keys])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"{name}\nkeep-ratio", fontsize=8)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(keys, rotation=90, fontsize=5)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in BITS_COLOURS.values()]
    axes[0, 0].legend(handles, [f"{b} bits" for b in BITS_COLOURS], fontsize=7, ncol=4, loc="lower right")
    out["policies"] = _png(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    entries = [("baseline", base)] + list(summary["controllers"].items())
    pairs = [(n, e["predicted_latency_ms"], (e.get("measured_latency") or {}).get("median_ms")) for n, e in entries]
    measured = [p for p in pairs if p[2]]
    for n, pred, meas in measured:
        ax.scatter([meas], [pred], color=COLOURS.get(n, "black"), label=n)
    if measured:
        hi = max(max(p[1], p[2]) for p in measured) * 1.15
        ax.plot([0, hi], [0, hi], "k-", lw=1)
        ax.fill_between([0, hi], [0, hi * 0.9], [0, hi * 1.1], color="green", alpha=0.1, label="+-10%")
    ax.set_xlabel("measured median latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.legend(fontsize=8)
    out["predicted_vs_measured"] = _png(fig)
    return out


def _fmt(value: Any, spec: str, missing: str = "not measured") -> str:
    return missing if value is None else format(value, spec)


def _table(summary: dict[str, Any]) -> str:
    base = summary["baseline"]
    head = ("<tr><th></th><th>val acc</th><th>test acc (torch)</th><th>test acc (onnxruntime)</th><th>params</th>"
            "<th>params -%</th><th>FP32 MB</th><th>effective MB</th><th>compression %</th><th>predicted ms</th>"
            "<th>measured median ms</th><th>measured p90 ms</th><th>speedup</th><th>reward</th></tr>")
    rows = []
    entries = [("FP32 baseline", {**base, "effective_size_bytes": base["fp32_size_bytes"], "speedup": 1.0})]
    entries += list(summary["controllers"].items())
    for name, e in entries:
        m = e.get("measured_latency") or {}
        params_cut = 1 - e["params"] / base["params"]
        compression = 1 - e["effective_size_bytes"] / base["fp32_size_bytes"]
        cells = [name, _fmt(e.get("val_accuracy"), ".2%"), _fmt(e.get("test_accuracy"), ".2%"),
                 _fmt(e.get("test_accuracy_onnxruntime"), ".2%"), f"{e['params']:,}", f"{params_cut:.1%}",
                 f"{e['fp32_size_bytes'] / 2**20:.2f}", f"{e['effective_size_bytes'] / 2**20:.2f}",
                 f"{compression:.1%}", _fmt(e.get("predicted_latency_ms"), ".3f", "-"), _fmt(m.get("median_ms"), ".3f"),
                 _fmt(m.get("p90_ms"), ".3f"), _fmt(e.get("speedup"), ".2f") + ("x" if e.get("speedup") else ""),
                 _fmt(e.get("reward"), ".4f", "-")]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _flatten(doc: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(doc, dict):
        return [kv for k, v in doc.items() for kv in _flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):
        return [kv for i, v in enumerate(doc) for kv in _flatten(v, f"{prefix}[{i}]")]
    return [(prefix, json.dumps(doc) if isinstance(doc, list) else str(doc))]


def build_report(run: Path) -> Path:
    """Write run/report.html and run/plots/*.png; return the report's path."""
    run = Path(run)
    summary, rows, torn = _load(run)
    device = json.loads((run / "device.json").read_text()) if (run / "device.json").exists() else {}
    config = (run / "config.json").read_text() if (run / "config.json").exists() else "{}"
    images = _plots(summary, rows)
    (run / "plots").mkdir(exist_ok=True)
    for name, data in images.items():
        (run / "plots" / f"{name}.png").write_bytes(data)
    img = {k: f'<img src="data:image/png;base64,{base64.b64encode(v).decode()}" alt="{k}">' for k, v in images.items()}
    base = summary["baseline"]
    fingerprint = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                          for k, v in _flatten(device.get("fingerprint", {})))
    note = (f"<p class=warn>{torn} torn line(s) in episodes.jsonl (a killed write) were skipped.</p>" if torn else "")
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>hadmc report</title><style>
body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} td:first-child{{text-align:left}}
img{{max-width:100%}} .warn{{color:#a00}} pre{{background:#f6f6f6;padding:8px;overflow:auto}}</style></head><body>
<h1>hadmc: {html.escape(base['model'])} on {html.escape(base['data'])}</h1>
<p>device {html.escape(device.get('fingerprint_hash', 'unknown')[:16])} ({html.escape(device.get('address', ''))});
{len(rows)} episodes; LUT versions {html.escape(str(summary.get('lut_version_ids', [])))};
wall time {summary.get('wall_s', 0) / 60:.1f} min</p>{note}
<h2>Summary</h2>{_table(summary)}
<p>Accuracy on the test split for final models only; episodes are scored on the validation split.
Latencies at batch 1 on the device; "predicted" comes from the LUT, "measured" from the agent's benchmark.</p>
<h2>Accuracy vs latency</h2>{img['pareto']}
<h2>Reward per episode</h2>{img['reward']}
<h2>Per-layer policy of each final model</h2>{img['policies']}
<h2>Predicted vs measured latency</h2>{img['predicted_vs_measured']}
<h2>Device</h2><p>fingerprint hash {html.escape(device.get('fingerprint_hash', 'unknown'))}</p>
<table>{fingerprint}</table>
<h2>Config</h2><details><summary>resolved config</summary><pre>{html.escape(config)}</pre></details>
</body></html>"""
    path = run / "report.html"
    path.write_text(doc)
    return path
