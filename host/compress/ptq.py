"""What a user gets from onnxruntime's own post-training quantizer in one command: static int8
(QDQ, int8 per-channel weights, uint8 activations, min-max ranges from calibration batches), with
onnxruntime's recommended pre-processing (shape inference and graph optimization) first.

hadmc's tables put it beside the search's models: the baseline a demanding user compares with.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process


class PtqError(ValueError):
    """The quantizer cannot run on this model or these calibration inputs."""


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter([{name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def calibration_batches(x: np.ndarray, batch_size: int, count: int) -> list[np.ndarray]:
    """The first `count` batches of `batch_size` inputs of `x`; a split too small is an error."""
    if count < 1 or batch_size < 1:
        raise PtqError(f"calibration needs at least one batch of at least one input (got {count} of {batch_size})")
    if len(x) < count * batch_size:
        raise PtqError(
            f"calibration needs {count} batches of {batch_size} inputs ({count * batch_size}), but the calibration "
            f"split holds {len(x)}: lower calibration_batches or batch_size"
        )
    return [np.ascontiguousarray(x[i * batch_size : (i + 1) * batch_size], dtype=np.float32) for i in range(count)]


def quantize_int8(
    fp32: Path, out: Path, batches: list[np.ndarray], per_channel: bool = True, weight_bits: int = 8
) -> Path:
    """`fp32` quantized by onnxruntime to static int8 at `out`, calibrated on `batches`; with
    `weight_bits` 7 the weights take 7 bits (the quantizer's `reduce_range`, which onnxruntime
    recommends for x86 CPUs without VNNI)."""
    try:
        model = onnx.load(fp32)
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a file that is not a model
        raise PtqError(f"{fp32} is not an ONNX model onnxruntime's quantizer can read: {exc}") from None
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise PtqError(f"{fp32} has {len(inputs)} inputs ({', '.join(inputs)}); the quantizer here feeds one")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                prepared,
                out,
                _Reader(inputs[0], batches),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                reduce_range=weight_bits == 7,
            )
        except PtqError:
            raise
        except Exception as exc:  # the quantizer's own errors name what it could not handle
            raise PtqError(f"onnxruntime's quantizer failed on {fp32.name}: {exc}") from None
    _drop_unused_domains(out)
    return out


def _drop_unused_domains(path: Path) -> None:
    """The quantizer declares opset domains no node uses (e.g. ai.onnx.training); an agent
    refuses models that import custom-op domains, so keep only those the graph needs."""
    model = onnx.load(path)
    used = {n.domain for n in model.graph.node} | {""}
    kept = [o for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    if len(kept) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(kept)
        onnx.save(model, path)
