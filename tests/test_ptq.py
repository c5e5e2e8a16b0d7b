"""onnxruntime's static int8 quantizer as hadmc's one-command baseline, and how the uniform
baseline's keep-ratio is chosen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from host.compress.export import export_onnx
from host.compress.ptq import PtqError, calibration_batches, quantize_int8
from host.models import build_model
from host.search.alternatives import _grid, uniform_keep
from tests.helpers import ort_int8_saturates


def _mlp(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model("mlp", 3, (30,)).eval()
    path = tmp_path / "fp32.onnx"
    export_onnx(model, path, (30,))
    return path, model


@pytest.mark.parametrize(
    "weight_bits",
    [
        pytest.param(8, marks=pytest.mark.skipif(ort_int8_saturates(), reason="this CPU's int8 kernels saturate")),
        7,  # reduce_range: exact on every x86 CPU
    ],
)
def test_the_quantized_model_is_int8_and_computes_what_the_fp32_model_does(tmp_path, weight_bits):
    fp32, model = _mlp(tmp_path)
    x = np.random.default_rng(0).normal(size=(64, 30)).astype(np.float32)
    out = quantize_int8(fp32, tmp_path / "int8.onnx", calibration_batches(x, 16, 4), weight_bits=weight_bits)
    graph = onnx.load(out)
    weights = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights and any(n.op_type == "QuantizeLinear" for n in graph.graph.node)
    levels = np.concatenate([onnx.numpy_helper.to_array(t).ravel() for t in weights])
    assert levels.min() >= -(2 ** (weight_bits - 1)) and levels.max() <= 2 ** (weight_bits - 1)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    expected = model(torch.from_numpy(x)).detach().numpy()
    assert np.abs(got - expected).max() < 0.1 * np.abs(expected).max()
    assert (got.argmax(1) == expected.argmax(1)).mean() > 0.9
    assert out.stat().st_size < 0.5 * fp32.stat().st_size


def test_bad_inputs_are_named(tmp_path):
    x = np.zeros((40, 30), np.float32)
    with pytest.raises(PtqError, match=r"needs 4 batches of 16 inputs \(64\), but the calibration split holds 40"):
        calibration_batches(x, 16, 4)
    with pytest.raises(PtqError, match="at least one batch"):
        calibration_batches(x, 16, 0)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(PtqError, match="junk.onnx is not an ONNX model"):
        quantize_int8(junk, tmp_path / "out.onnx", calibration_batches(x, 8, 1))


class _Space:
    min_keep, max_keep = 0.2, 0.9
    layers = ["a", "b"]

    def policy(self, keeps, precisions):
        return keeps[0]


class _Exported:
    def __init__(self, keep: float) -> None:
        self.keep = keep


class _Bench:
    """Latency grows with the keep-ratio (a fake device for the bisection's logic)."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def variant(self, policy):
        return policy

    def export(self, model, policy, path):
        return _Exported(policy)

    def predict(self, exported):
        self.asked.append(exported.keep)
        return type("P", (), {"latency_ms": 10.0 * exported.keep})()


def test_the_uniform_keep_is_the_largest_within_the_budget_found_by_bisection(tmp_path):
    assert _grid(0.2, 0.9)[:3] == [0.2, 0.25, 0.3] and _grid(0.2, 0.9)[-1] == 0.9 and len(_grid(0.2, 0.9)) == 15
    assert _grid(0.2, 0.93)[-2:] == [0.9, 0.93]
    bench = _Bench()
    keep, ms = uniform_keep(bench, _Space(), 4.6, tmp_path)
    assert (keep, ms) == (0.45, 4.5) and len(bench.asked) <= 5
    assert uniform_keep(_Bench(), _Space(), 100.0, tmp_path)[0] == 0.9
    assert uniform_keep(_Bench(), _Space(), 0.1, tmp_path)[0] == 0.2  # nothing fits: the smallest


def test_the_quantized_model_declares_only_the_domains_it_uses(tmp_path):
    fp32, _ = _mlp(tmp_path)
    x = np.random.default_rng(0).normal(size=(16, 30)).astype(np.float32)
    out = quantize_int8(fp32, tmp_path / "int8.onnx", calibration_batches(x, 16, 1))
    graph = onnx.load(out)
    assert {o.domain for o in graph.opset_import} <= {n.domain for n in graph.graph.node} | {"", "ai.onnx"}
