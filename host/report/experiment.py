"""`build_experiment_report(dir)`: the self-contained report.html of one `hadmc experiment` run:
what each row means, the table over seeds, its figures (also in dir/plots/), links to the
report of every search behind it, and the resolved configs."""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

from host.experiment.results import Results
from host.report.experiment_plots import experiment_plots
from host.report.html import CSS
from host.report.load import ReportError
from host.runs import RunFileError, read_json, read_record

CAPTIONS = {
    "model_bars": "Test accuracy (torch), measured speedup and compression of every row; error bars: std over seeds.",
    "measured_pareto": "Measured latency on the device against test accuracy in onnxruntime, every row (mean over "
    "seeds, bars: +-1 std); the dashed line joins the rows no other is both faster and more accurate than.",
    "episode_curves": "Reward and validation accuracy of each episode's policy after its short fine-tune; lines: "
    "mean over seeds, bands: +-1 std.",
    "device_matrix": "Each device's policy (rows) benchmarked on each device (columns): speedup over the FP32 model "
    "measured on that device, and the measured latency (mean over seeds).",
}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(results: Results) -> str:
    head = "".join(f"<th>{_e(t)}</th>" for t in (*results.labels, *(c.title for c in results.columns)))
    body = "".join(
        "<tr>"
        + "".join(f"<td>{_e(v)}</td>" for v in row.label)
        + "".join(f"<td>{_e(results.cell_text(row, c))}</td>" for c in results.columns)
        + "</tr>"
        for row in results.rows
    )
    return f'<table class="num" id="results"><tr>{head}</tr>{body}</table>'


def _tests(results: Results) -> str:
    """The paired tests, one row a compared method; '' without them."""
    if not results.tests:
        return ""
    ours = " / ".join(results.reference or ())
    head, rows = results.tests_table()
    cells = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (
        f"<h2>Paired tests against {_e(ours)}</h2><p>Each cell: the mean over seeds of {_e(ours)} minus the row, "
        "the exact two-sided p-value of a sign-flip permutation test, and the smallest p-value that many seeds "
        f'can give.</p><table class="num" id="tests"><tr>{"".join(f"<th>{_e(h)}</th>" for h in head)}</tr>'
        f"{cells}</table>"
    )


def _figure(stem: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(stem)}"><figcaption>{_e(CAPTIONS[stem])} '
        f"(also <code>plots/{_e(stem)}.png</code>)</figcaption></figure>"
    )


def render(results: Results, experiment: dict, plots: dict[str, bytes]) -> str:
    runs = "".join(f'<li><a href="{_e(run)}/report.html">{_e(run)}</a></li>' for run in results.runs)
    config = json.dumps(experiment, indent=2, sort_keys=True)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(results.title)}</title><style>{CSS}</style></head><body>
<h1>{_e(results.title)}</h1>
<p class="sub">hadmc experiment {_e(results.study)} &middot; {_e(results.seeds_text())}</p>
<h2>What each row is</h2>
<p>{_e(results.rows_doc)}</p>
<h2>Results</h2>
{_table(results)}
{_tests(results)}
{"".join(_figure(stem, png) for stem, png in plots.items())}
<h2>Runs</h2>
<p>Every search behind the table, each with its own report (episodes, policies, device, LUT versions):</p>
<ul>{runs}</ul>
<h2>Config</h2>
<details><summary>experiment.json (the study, the resolved search config, the experiment settings)</summary>
<pre>{_e(config)}</pre></details>
</body></html>
"""


def build_experiment_report(out: Path) -> Path:
    """Write out/report.html and out/plots/*.png from results.json and experiment.json."""
    paths = [out / "results.json", out / "experiment.json"]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ReportError(f"{', '.join(missing)} missing: {out} is not a finished experiment")
    try:
        results = read_record(paths[0], Results)
        experiment = read_json(paths[1])
    except RunFileError as exc:
        raise ReportError(str(exc)) from None
    plots = experiment_plots(results)
    (out / "plots").mkdir(exist_ok=True)
    for stem, png in plots.items():
        (out / "plots" / f"{stem}.png").write_bytes(png)
    path = out / "report.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(results, experiment, plots), encoding="utf-8")
    os.replace(tmp, path)
    return path
