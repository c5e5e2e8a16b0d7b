"""`build_report(run_dir)`: the self-contained report.html of one search run.

The summary table in the style of the paper's Table 2, accuracy vs latency of every evaluated
policy (Pareto front per controller), reward per episode, the per-layer policy of each final model,
predicted vs measured latency, the device fingerprint, the LUT versions and the resolved config.
Everything is recomputed from the run directory; the figures are also written to run_dir/plots/
and embedded as data URIs, with inline CSS, so the file needs nothing else to be read.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path
from typing import Any

from host.report.load import LayerChoice, ModelRow, RunData, load_run
from host.report.plots import all_plots
from host.runs import DeviceRecord

NOT_MEASURED = "not measured"
MB = 1e6  # sizes in the table are in MB = 10^6 bytes

FIGURES = {
    "accuracy_vs_latency": (
        "Accuracy vs latency",
        (
            "Validation accuracy after each episode's short fine-tune "
            "against the latency the LUT predicts, for every evaluated policy. Lines are each "
            "controller's Pareto front; diamonds are the final models after the full fine-tune; "
            "the star is the FP32 baseline."
        ),
    ),
    "reward_per_episode": ("Reward per episode", "Dots: the reward of each episode; lines: the best reward so far."),
    "per_layer_policy": (
        "Per-layer policy of each final model",
        "Bar height: the fraction of output channels kept in that layer; colour: its precision.",
    ),
    "predicted_vs_measured": (
        "Predicted vs measured latency",
        (
            "Predicted: the sum of the LUT latencies of the model's kernels. Measured: the "
            "agent's benchmark of the exported ONNX model on the device (its latency of record: the "
            "median, or the 10th percentile on an agent set to it; bar to p90). "
            "The shaded band is within 10% of the measurement."
        ),
    ),
    "hirelc_budgets": (
        "HiReLC: budgets per block and cycle",
        (
            "Top: each block's retained-size fraction (storage bits / 32 times kept channels, weighted by "
            "parameters) as the low-level agents' consensus realized it, one bar per cycle, and the target the "
            "high-level agents gave it (black). Bottom: the effective storage compression of each cycle's policy "
            "and the surrogate's mean absolute error on the cycles it predicted before learning them."
        ),
    ),
}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1250px;padding:0 1em;
color:#222}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
.sub{color:#555;margin-top:0}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}
th,td{border:1px solid #ccc;padding:3px 7px} th{background:#f3f3f3}
table.num td{text-align:right} table.num td:first-child{text-align:left;font-weight:600}
table.kv td:first-child{font-family:monospace;white-space:nowrap} table.kv td{vertical-align:top;word-break:break-word}
td.na{color:#a00000;font-style:italic}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{color:#555;font-size:13px}
.warn{background:#fff4e5;border-left:4px solid #e69500;padding:.5em 1em}
pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}
code{font-size:12px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(text: str, missing: bool = False) -> str:
    return f'<td class="na">{_e(text)}</td>' if missing else f"<td>{_e(text)}</td>"


def _num(value: float | None, spec: str, suffix: str = "", missing: str = NOT_MEASURED) -> str:
    """One table cell; None is `missing` (a measurement that was not made), never 0."""
    if value is None:
        return _cell(missing, missing=True)
    if not math.isfinite(value):
        return _cell(str(value))
    return _cell(format(value, spec) + suffix)


def _pct(value: float | None) -> str:
    return _num(None if value is None else 100 * value, ".2f", "%")


def _summary_rows(run: RunData) -> list[list[str]]:
    base = run.baseline
    # The teacher's macro F1 as the device runs it, measured beside every final model's.
    teacher_f1 = next((r.agreement.teacher_macro_f1 for r in run.finals if r.agreement), None)
    rows = []
    for row in (base, *run.finals, *run.alternatives):
        is_base = row is base
        is_alternative = any(row is a for a in run.alternatives)  # no torch model: onnxruntime made it
        params_cut = 1 - row.params / base.params if base.params else None
        size_cut = (
            1 - row.effective_size_bytes / base.fp32_size_bytes
            if base.fp32_size_bytes and row.effective_size_bytes is not None
            else None
        )
        predicted_speedup = (
            base.predicted_latency_ms / row.predicted_latency_ms
            if row.predicted_latency_ms and base.predicted_latency_ms
            else None
        )
        rows.append(
            [
                f"<td>{_e(row.name)}</td>",
                _cell("-") if is_alternative else _pct(row.val_accuracy),
                _cell("-") if is_alternative else _pct(row.test_accuracy),
                _pct(row.test_accuracy_onnxruntime),
                _cell("-") if is_base else _pct(row.agreement and row.agreement.teacher_agreement),
                _num(teacher_f1 if is_base else row.agreement and row.agreement.macro_f1, ".4f"),
                _cell(f"{row.params:,}"),
                _cell("-") if is_base else _num(None if params_cut is None else 100 * params_cut, ".1f", "%", "-"),
                _cell(f"{row.fp32_size_bytes / MB:.2f}"),
                _num(None if row.effective_size_bytes is None else row.effective_size_bytes / MB, ".2f", "", "-"),
                _num(None if row.file_bytes is None else row.file_bytes / MB, ".2f"),
                _cell("-") if is_base else _num(None if size_cut is None else 100 * size_cut, ".1f", "%", "-"),
                _num(row.predicted_latency_ms, ".3f", "", "not predicted"),
                _num(row.measured.latency_ms, ".3f"),
                _num(row.measured.p90_ms, ".3f"),
                _num(predicted_speedup, ".2f", "x", "-"),
                _num(row.speedup, ".2f", "x"),
                _cell("-") if row.reward is None else _num(row.reward, ".4f"),
                _cell("-") if row.episodes is None else _cell(str(row.episodes)),
            ]
        )
    return rows


SUMMARY_HEADER = (
    "<tr><th rowspan=2>model</th><th colspan=3>accuracy</th><th colspan=2>against the teacher (test)</th>"
    "<th colspan=2>parameters</th><th colspan=4>size</th><th colspan=3>latency, batch 1 (ms)</th>"
    "<th colspan=2>speedup over FP32</th><th rowspan=2>reward</th><th rowspan=2>episodes</th></tr>"
    "<tr><th>val</th><th>test (torch)</th><th>test (onnxruntime)</th><th>agreement</th><th>macro F1</th>"
    "<th>count</th><th>reduction</th><th>FP32 MB</th><th>effective MB</th><th>ONNX file MB</th><th>compression</th>"
    "<th>predicted</th><th>measured</th><th>measured p90</th><th>predicted</th><th>measured</th></tr>"
)


def _alternatives_text(run: RunData) -> str:
    """What each one-command baseline row is, from its record."""
    if not run.alternatives:
        return ""
    return "The rows after the controllers are what a user gets in one command without hadmc: " + "; ".join(
        f"<b>{_e(a.name)}</b>: {_e(a.description)}" for a in run.alternatives
    )


def summary_table(run: RunData) -> str:
    """The paper's Table 2: one row for the baseline and one per controller's final model."""
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in _summary_rows(run))
    return f'<table class="num" id="summary">{SUMMARY_HEADER}{body}</table>'


def _layer_table(layers: tuple[LayerChoice, ...]) -> str:
    rows = "".join(
        f"<tr><td>{_e(c.layer)}</td><td>{c.keep_ratio:.3f}</td><td>{_e(c.precision)}</td>"
        f"<td>{_e(c.granularity or '-')}</td></tr>"
        for c in layers
    )
    header = "<tr><th>layer</th><th>keep-ratio</th><th>precision</th><th>granularity</th></tr>"
    return f'<table class="num">{header}{rows}</table>'


def _policies(finals: tuple[ModelRow, ...]) -> str:
    parts = []
    for final in finals:
        where = f"; ONNX at <code>{_e(final.onnx)}</code>" if final.onnx else ""
        parts.append(
            f"<details><summary>{_e(final.name)}: {len(final.layers)} layers{where}</summary>"
            f"{_layer_table(final.layers)}</details>"
        )
    return "".join(parts)


def _flatten(doc: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted path, readable value) pairs of a nested JSON document."""
    if isinstance(doc, dict):
        if not doc:
            return [(prefix, "{}")] if prefix else []
        return [kv for k, v in doc.items() for kv in _flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(doc, list):
        if doc and all(isinstance(v, dict) for v in doc):
            return [kv for i, v in enumerate(doc) for kv in _flatten(v, f"{prefix}[{i}]")]
        return [(prefix, ", ".join(str(v) for v in doc) if doc else "(none)")]
    return [(prefix, "(empty)" if doc == "" else str(doc))]


def _kv_table(pairs: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in pairs)
    return f'<table class="kv">{rows}</table>'


def device_name(device: DeviceRecord | None) -> str:
    """A short human name of the device: its first GPU, else its CPU, and the execution provider."""
    if device is None:
        return "unknown device"
    fp = device.fingerprint
    gpus = fp.get("gpus") or []
    name = ""
    if gpus and isinstance(gpus[0], dict):
        name = str(gpus[0].get("name") or "")
    if not name and isinstance(fp.get("cpu"), dict):
        name = str(fp["cpu"].get("model") or "")
    provider = fp.get("execution_provider")
    name = name or "unknown device"
    return f"{name} ({provider})" if provider else name


def _device_section(run: RunData) -> str:
    device = run.device
    if device is None:
        return f'<p class="warn">{_e(run.run_dir / "device.json")} is missing: the device is not recorded.</p>'
    parts = [
        (
            f'<p>fingerprint hash <code id="fingerprint-hash">{_e(device.fingerprint_hash)}</code>'
            f" &middot; address {_e(device.endpoint.label if device.endpoint else device.address)}"
            f"{' (TLS)' if device.endpoint and device.endpoint.tls else ''} &middot; {_e(device_name(device))}</p>"
        )
    ]
    if device.precisions:
        rows = "".join(
            f"<tr><td>{_e(p.precision)}</td><td>{'yes' if p.supported else 'no'}</td><td>{_e(p.note)}</td></tr>"
            for p in device.precisions
        )
        parts.append(
            f'<h3>Precisions</h3><table class="kv"><tr><th>precision</th><th>supported</th>'
            f"<th>note</th></tr>{rows}</table>"
        )
    parts.append("<h3>Fingerprint</h3>" + _kv_table(_flatten(device.fingerprint)))
    return "".join(parts)


def _lut_section(run: RunData) -> str:
    ids = ", ".join(str(v) for v in run.lut_version_ids) or "none recorded"
    used = sorted({v for e in run.episodes for v in e.lut_version_ids})
    out = f'<p>LUT version ids of this run: <span id="lut-versions">{_e(ids)}</span></p>'
    if used and set(used) - set(run.lut_version_ids):
        out += f"<p>Versions the episodes used: {_e(', '.join(map(str, used)))}</p>"
    out += (
        "<p>Every latency above is traceable to these versions; <code>hadmc lut show V</code> lists the "
        "kernels of one.</p>"
    )
    return out


def _config_section(run: RunData) -> str:
    if run.config is None:
        return f'<p class="warn">{_e(run.run_dir / "config.json")} is missing.</p>'
    text = json.dumps(run.config, indent=2, sort_keys=True)
    return f"<details><summary>resolved search config (config.json)</summary><pre>{_e(text)}</pre></details>"


def _warnings(run: RunData) -> list[str]:
    out = []
    if run.skipped_last_line is not None:
        out.append(
            f"episodes.jsonl: line {run.skipped_last_line}, the last one, was truncated (the run was killed "
            "while writing it) and was skipped; the report shows the episodes before it."
        )
    if not run.episodes:
        out.append("episodes.jsonl holds no episodes.")
    unmeasured = [r.name for r in (run.baseline, *run.finals) if r.measured.latency_ms is None]
    if unmeasured:
        out.append("Latency not measured on the device for: " + ", ".join(unmeasured) + ".")
    return out


def _figure_html(stem: str, png: bytes) -> str:
    title, caption = FIGURES[stem]
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<h2>{_e(title)}</h2><figure><img src="data:image/png;base64,{data}" alt="{_e(title)}">'
        f"<figcaption>{_e(caption)} (also <code>plots/{_e(stem)}.png</code>)</figcaption></figure>"
    )


def render(run: RunData, plots: dict[str, bytes]) -> str:
    """The report page as one HTML string."""
    wall = f"{run.wall_s / 60:.1f} min" if run.wall_s is not None else "not recorded"
    hash_short = run.device.fingerprint_hash[:12] if run.device else "unknown"
    title = f"hadmc: {run.model} on {run.data}, {device_name(run.device)}"
    warnings = "".join(f'<p class="warn">{_e(w)}</p>' for w in _warnings(run))
    figures = {stem: _figure_html(stem, png) for stem, png in plots.items()}
    policies_detail = _policies(run.finals)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{CSS}</style></head><body>
<h1>{_e(title)}</h1>
<p class="sub">device fingerprint {_e(hash_short)} &middot; controllers {_e(", ".join(run.controllers) or "none")}
&middot; {len(run.episodes)} episodes &middot; wall time {_e(wall)}
&middot; run directory <code>{_e(run.run_dir)}</code></p>
{warnings}
<h2>Summary</h2>
{summary_table(run)}
<p class="sub">Episodes are scored on the validation split; test accuracy is of the final models only (after the
full fine-tune), in torch and in onnxruntime on the exported model. Effective size counts each weight at its
precision. Predicted latency comes from the LUT; measured latency from the agent's benchmark on the device.
Speedups are over the FP32 baseline; "{NOT_MEASURED}" marks a measurement that could not be made.
{_alternatives_text(run)}</p>
{figures.get("accuracy_vs_latency", "")}
{figures.get("reward_per_episode", "")}
{figures.get("per_layer_policy", "")}
{figures.get("hirelc_budgets", "")}
{policies_detail}
{figures.get("predicted_vs_measured", "")}
<h2>Device</h2>
{_device_section(run)}
<h2>LUT versions</h2>
{_lut_section(run)}
<h2>Config</h2>
{_config_section(run)}
</body></html>
"""


def build_report(run_dir: Path) -> Path:
    """Write run_dir/report.html (and the figures as run_dir/plots/*.png); return the report's path.

    Raises ReportError, naming the file, when summary.json or episodes.jsonl is missing or malformed."""
    run = load_run(Path(run_dir))
    plots = all_plots(run)
    plot_dir = run.run_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    for stem, png in plots.items():
        (plot_dir / f"{stem}.png").write_bytes(png)
    path = run.run_dir / "report.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(run, plots), encoding="utf-8")
    os.replace(tmp, path)
    return path
