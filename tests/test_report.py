"""The HTML report from a synthetic run directory written to the contract `hadmc search` follows."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import pytest

from host.report import ReportError, build_report, pareto_front
from host.report.load import load_run
from host.report.plots import running_best
from host.runs import SCHEMA

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LAYERS = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2", "layer10.0.conv1", "fc"]
HASH = "3f9a1c0d5e7b2a4c6e8f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f"
CONTROLLERS = ("ppo", "random", "uniform")


def _latency(median: float) -> dict:
    return {
        "median_ms": median,
        "p90_ms": median * 1.08,
        "p99_ms": median * 1.2,
        "mean_ms": median * 1.02,
        "std_ms": median * 0.03,
        "min_ms": median * 0.97,
        "max_ms": median * 1.4,
        "n": 200,
        "rel_ci95": 0.01,
        "stable": True,
    }


def _policy(keep: float, precision: str) -> dict:
    return {
        "model": "resnet18",
        "layers": {
            name: {"keep_ratio": keep if name != "fc" else 1.0, "precision": precision, "granularity": "per-channel"}
            for name in LAYERS
        },
    }


BASELINE = {
    "schema": SCHEMA,
    "model": "resnet18",
    "data": "neu-det-synthetic",
    "val_accuracy": 0.9722,
    "test_accuracy": 0.9688,
    "test_accuracy_onnxruntime": 0.9688,
    "params": 11_179_590,
    "fp32_size_bytes": 44_718_360,
    "predicted_latency_ms": 21.84,
    "measured_latency": _latency(22.41),
    "file_bytes": 44_730_000,
}

FINALS = {
    "ppo": {
        "policy": _policy(0.35, "int8"),
        "val_accuracy": 0.9694,
        "test_accuracy": 0.9653,
        "test_accuracy_onnxruntime": 0.9647,
        "params": 1_402_118,
        "fp32_size_bytes": 5_608_472,
        "effective_size_bytes": 1_433_212,
        "predicted_latency_ms": 2.613,
        "measured_latency": _latency(2.781),
        "baseline_measured_latency": _latency(22.41),
        "speedup": 8.058,
        "benchmark_rounds": [{"model_ms": 2.781, "baseline_ms": 22.41}],
        "params_reduction": 0.8746,
        "compression": 0.968,
        "reward": 0.9123,
        "episode": 7,
        "episodes": 10,
        "onnx": "final/ppo/model.onnx",
        "file_bytes": 1_502_000,
        "agreement": {
            "teacher_agreement": 0.981,
            "recall": [0.96] * 6,
            "f1": [0.965] * 6,
            "teacher_recall": [0.97] * 6,
            "teacher_f1": [0.97] * 6,
            "chi2": 3.2,
            "chi2_p_value": 0.52,
            "chi2_dof": 7,
        },
    },
    "random": {
        "policy": _policy(0.55, "int8"),
        "val_accuracy": 0.9611,
        "test_accuracy": 0.9583,
        "test_accuracy_onnxruntime": None,
        "params": 3_389_210,
        "fp32_size_bytes": 13_556_840,
        "effective_size_bytes": 3_420_377,
        "predicted_latency_ms": 5.907,
        "measured_latency": None,
        "baseline_measured_latency": None,
        "speedup": None,
        "benchmark_rounds": [],
        "params_reduction": 0.6968,
        "compression": 0.9235,
        "reward": 0.8412,
        "episode": 3,
        "episodes": 10,
        "onnx": "final/random/model.onnx",
    },
    "uniform": {
        "policy": _policy(0.5, "fp32"),
        "val_accuracy": 0.9645,
        "test_accuracy": 0.9618,
        "test_accuracy_onnxruntime": 0.9618,
        "params": 2_801_774,
        "fp32_size_bytes": 11_207_096,
        "effective_size_bytes": 11_207_096,
        "predicted_latency_ms": 7.402,
        "measured_latency": _latency(7.95),
        "baseline_measured_latency": _latency(22.41),
        "speedup": 2.819,
        "benchmark_rounds": [{"model_ms": 7.95, "baseline_ms": 22.41}],
        "params_reduction": 0.7494,
        "compression": 0.7494,
        "reward": 0.7531,
        "episode": 0,
        "episodes": 10,
        "onnx": "final/uniform/model.onnx",
    },
}

DEVICE = {
    "schema": SCHEMA,
    "fingerprint_hash": HASH,
    "address": "embedded",
    "fingerprint": {
        "agent_version": "0.1.0",
        "profiler_version": "3",
        "cpu": {
            "model": "AMD EPYC 7B13 <test & co>",
            "architecture": "x86_64",
            "physical_cores": 2,
            "logical_cores": 2,
            "flags": ["avx2", "fma", "avx512f"],
        },
        "memory_total_bytes": 8_589_934_592,
        "gpus": [],
        "gpu_driver_version": "",
        "onnxruntime_version": "1.22.0",
        "execution_provider": "CPUExecutionProvider",
        "provider_options": {},
        "intra_op_threads": 2,
        "inter_op_threads": 1,
        "notes": {"gpus": "NVML library not found"},
    },
    "precisions": [
        {"precision": "fp32", "supported": True, "note": ""},
        {"precision": "int8", "supported": True, "note": "QLinearConv via MLAS"},
        {"precision": "int4", "supported": False, "note": "no int4 kernels on CPU"},
    ],
}


def _episodes() -> list[dict]:
    rows = []
    for c, name in enumerate(CONTROLLERS):
        for k in range(10):
            keep = 0.3 + 0.05 * ((k * (c + 3)) % 9)
            bits = 8 if (k + c) % 3 else 32
            latency = 21.84 * keep * keep * (0.35 if bits == 8 else 1.0) + 0.4
            acc = 0.90 + 0.07 * keep - 0.004 * (bits == 8) + 0.002 * (k % 2)
            rows.append(
                {
                    "schema": SCHEMA,
                    "controller": name,
                    "episode": k,
                    "policy": _policy(keep, "int8" if bits == 8 else "fp32"),
                    "predicted_latency_ms": round(latency, 4),
                    "val_accuracy": round(acc, 4),
                    "params": int(11_179_590 * keep * keep),
                    "size_bytes": int(44_718_360 * keep * keep * bits / 32),
                    "reward": round(acc * (21.84 / latency) ** 0.1, 4),
                    "lut_version_ids": [7, 9],
                    "wall_s": 31.5 + k,
                    "profiled_kernels": 3 if k == 0 else 0,
                }
            )
            if name == "ppo":  # practising on a surrogate from its third episode
                rows[-1]["surrogate_reward"] = None if k < 3 else round(rows[-1]["reward"] * 0.98, 4)
    return rows


def write_run(run: Path, episodes: list[dict] | None = None) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(
        json.dumps(
            {"model": "resnet18", "episodes": 10, "reward": {"w": 0.1, "v": 0.0}, "note": "<script>alert(1)</script>"}
        )
    )
    (run / "device.json").write_text(json.dumps(DEVICE))
    (run / "baseline.json").write_text(json.dumps(BASELINE))
    rows = _episodes() if episodes is None else episodes
    (run / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"baseline": BASELINE, "controllers": FINALS, "lut_version_ids": [7, 9, 12], "wall_s": 1834.2}
    (run / "summary.json").write_text(json.dumps({"schema": SCHEMA, **summary, "episodes": 10}))
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    run = write_run(tmp_path_factory.mktemp("run"))
    path = build_report(run)
    return run, path.read_text()


def _summary_row(text: str, name: str) -> list[str]:
    table = re.search(r'<table class="num" id="summary">(.*?)</table>', text, re.DOTALL).group(1)
    for row in re.findall(r"<tr>(.*?)</tr>", table, re.DOTALL):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL)
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no summary row for {name}")


def test_report_is_a_self_contained_file(report):
    run, text = report
    assert (run / "report.html").is_file()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.IGNORECASE)
    assert "<link" not in text and "<script" not in text
    images = re.findall(r'<img src="([^"]+)"', text)
    assert len(images) == 4
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.removeprefix("data:image/png;base64,")).startswith(PNG_MAGIC)


def test_summary_rows_hold_the_numbers_formatted(report):
    _, text = report
    # model, val, test torch, test ort, agreement, macro F1, params, reduction, FP32 MB, eff MB, file MB,
    # compression, predicted, median, p90, predicted speedup, measured speedup, reward, episodes
    assert _summary_row(text, "FP32 baseline") == [
        "FP32 baseline",
        "97.22%",
        "96.88%",
        "96.88%",
        "-",
        "0.9700",
        "11,179,590",
        "-",
        "44.72",
        "44.72",
        "44.73",
        "-",
        "21.840",
        "22.410",
        "24.203",
        "1.00x",
        "1.00x",
        "-",
        "-",
    ]
    assert _summary_row(text, "ppo") == [
        "ppo",
        "96.94%",
        "96.53%",
        "96.47%",
        "98.10%",
        "0.9650",
        "1,402,118",
        "87.5%",
        "5.61",
        "1.43",
        "1.50",
        "96.8%",
        "2.613",
        "2.781",
        "3.003",
        "8.36x",
        "8.06x",
        "0.9123",
        "10",
    ]
    assert _summary_row(text, "random") == [
        "random",
        "96.11%",
        "95.83%",
        "not measured",
        "not measured",
        "not measured",
        "3,389,210",
        "69.7%",
        "13.56",
        "3.42",
        "not measured",
        "92.4%",
        "5.907",
        "not measured",
        "not measured",
        "3.70x",
        "not measured",
        "0.8412",
        "10",
    ]
    assert _summary_row(text, "uniform")[12:18] == ["7.402", "7.950", "8.586", "2.95x", "2.82x", "0.7531"]
    assert '<td class="na">not measured</td>' in text
    assert "Latency not measured on the device for: random." in text


def test_device_lut_and_config_sections(report):
    _, text = report
    assert f'<code id="fingerprint-hash">{HASH}</code>' in text
    assert '<span id="lut-versions">7, 9, 12</span>' in text
    assert "<td>cpu.model</td><td>AMD EPYC 7B13 &lt;test &amp; co&gt;</td>" in text
    assert "<td>cpu.flags</td><td>avx2, fma, avx512f</td>" in text
    assert "<td>int4</td><td>no</td><td>no int4 kernels on CPU</td>" in text
    assert "AMD EPYC 7B13 &lt;test &amp; co&gt; (CPUExecutionProvider)" in text  # the title names the device
    assert "resnet18 on neu-det-synthetic" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # the config, escaped
    assert "<details><summary>resolved search config" in text


def test_plots_are_written_and_decode(report):
    run, _ = report
    stems = {"accuracy_vs_latency", "reward_per_episode", "per_layer_policy", "predicted_vs_measured"}
    assert {p.stem for p in (run / "plots").glob("*.png")} == stems
    for stem in stems:
        data = (run / "plots" / f"{stem}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_the_surrogates_predictions_are_read_for_the_reward_plot(report):
    run = load_run(report[0])
    ppo = [e for e in run.episodes if e.controller == "ppo"]
    assert [e.surrogate_reward is None for e in ppo] == [True] * 3 + [False] * 7
    assert all(e.surrogate_reward == pytest.approx(e.reward * 0.98, abs=1e-4) for e in ppo[3:])
    assert all(e.surrogate_reward is None for e in run.episodes if e.controller != "ppo")


def test_pareto_front_on_a_hand_made_example():
    #            0            1            2            3            4            5           6
    points = [(1.0, 0.90), (2.0, 0.95), (1.5, 0.85), (0.5, 0.60), (3.0, 0.94), (0.5, 0.70), (2.5, 0.97)]
    # 3 loses to 5 (same latency, lower accuracy); 2 to 0; 4 to 1 and 6.
    assert pareto_front(points) == [5, 0, 1, 6]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.5), (1.0, 0.5)]) == [0]  # duplicates: the first one
    assert pareto_front([(1.0, math.nan), (2.0, 0.5)]) == [1]


def test_running_best():
    assert running_best([0.2, 0.1, 0.5, math.nan, 0.4]) == [0.2, 0.2, 0.5, 0.5, 0.5]


def test_layers_controllers_and_episodes_are_read_in_order(tmp_path):
    run = load_run(write_run(tmp_path))
    assert [c.layer for c in run.finals[0].layers] == LAYERS
    assert run.controllers == ["ppo", "random", "uniform"]
    assert len(run.episodes) == 30


def test_a_missing_summary_is_a_clear_error(tmp_path):
    run = write_run(tmp_path)
    (run / "summary.json").unlink()
    with pytest.raises(ReportError, match=r"summary\.json is missing"):
        build_report(run)
    assert not (run / "report.html").exists()


def test_missing_episodes_and_malformed_files_name_the_file(tmp_path):
    run = write_run(tmp_path)
    (run / "episodes.jsonl").unlink()
    with pytest.raises(ReportError, match=r"episodes\.jsonl is missing"):
        build_report(run)

    run = write_run(tmp_path)
    (run / "summary.json").write_text('{"baseline": ')
    with pytest.raises(ReportError, match=r"summary\.json is not valid JSON"):
        build_report(run)

    write_run(run)
    summary = json.loads((run / "summary.json").read_text())
    summary["controllers"]["ppo"]["params"] = "many"
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ReportError, match=r"summary\.json: controllers\.ppo\.params should be an integer"):
        build_report(run)

    layer = summary["controllers"]["ppo"]["policy"]["layers"]["conv1"]
    summary["controllers"]["ppo"]["params"], layer["precision"] = 1_000_000, "int3"
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ReportError, match=r"controllers\.ppo\.policy: layer conv1: unknown precision 'int3'; allowed"):
        build_report(run)
    layer["precision"] = "int8"

    del summary["controllers"]["ppo"]["params"], summary["baseline"]
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ReportError, match=r"summary\.json: baseline is missing"):
        build_report(run)

    lines = [json.dumps(r) for r in _episodes()]
    write_run(run)
    (run / "episodes.jsonl").write_text("\n".join([lines[0], lines[1][:40], *lines[2:]]) + "\n")
    with pytest.raises(ReportError, match=r"episodes\.jsonl: line 2 is not valid JSON"):
        build_report(run)

    rows = _episodes()
    del rows[3]["reward"]
    write_run(run, rows)
    with pytest.raises(ReportError, match=r"episodes\.jsonl: line 4: reward is missing"):
        build_report(run)

    write_run(run)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "schema": 1}))
    with pytest.raises(ReportError, match=r"summary\.json has run-file schema 1; this hadmc reads schema 2"):
        build_report(run)


def test_a_truncated_last_episode_line_is_skipped_and_noted(tmp_path):
    run = write_run(tmp_path)
    lines = [json.dumps(r) for r in _episodes()]
    (run / "episodes.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:57])  # killed mid-write
    text = build_report(run).read_text()
    assert "line 30, the last one, was truncated" in text
    assert "29 episodes" in text
    assert len(load_run(run).episodes) == 29


def test_an_empty_run_still_reports(tmp_path):
    run = write_run(tmp_path, episodes=[])
    (run / "device.json").unlink()
    (run / "config.json").unlink()
    text = build_report(run).read_text()
    assert "episodes.jsonl holds no episodes." in text
    assert "device.json is missing" in text and "config.json is missing" in text
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 4


def test_layers_keep_the_file_order_when_it_is_not_sorted(tmp_path):
    run = write_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    model_order = ["conv1", "layer1.0.conv1", "layer2.0.conv1", "fc"]
    summary["controllers"]["ppo"]["policy"]["layers"] = {
        name: {"keep_ratio": 0.5, "precision": "int8", "granularity": "per-tensor"} for name in model_order
    }
    (run / "summary.json").write_text(json.dumps(summary))
    assert [c.layer for c in load_run(run).finals[0].layers] == model_order
