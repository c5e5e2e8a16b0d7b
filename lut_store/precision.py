"""The numeric precision a layer or kernel runs at: one type for policies, op keys, size
accounting, reports and the wire, so no caller re-derives what a precision means."""

from __future__ import annotations

from enum import Enum

from protos.hadmc.v1 import agent_pb2, common_pb2


class Precision(str, Enum):
    """A precision the pipeline runs. Each member is also its key string (`Precision.INT8 ==
    "int8"`), so policy documents, op keys and their hashes read as they always did, and
    `Precision("int8")` parses one (an unknown name is a ValueError listing the allowed ones).
    bf16 runs where a runtime executes it (OpenVINO on CPUs with AVX-512 BF16 or AMX), fp8 (E4M3
    weights through a DequantizeLinear) where the runtime accepts float8 tensors; the device probe
    says where either does not."""

    # name in keys and documents, weight storage bits, activations' number type, wire enum
    FP32 = ("fp32", 32, "fp32", common_pb2.PRECISION_FP32)
    FP16 = ("fp16", 16, "fp16", common_pb2.PRECISION_FP16)
    BF16 = ("bf16", 16, "bf16", common_pb2.PRECISION_BF16)
    INT8 = ("int8", 8, "int8", common_pb2.PRECISION_INT8)  # W8A8: activations quantized too
    INT4W = ("int4", 4, "fp32", common_pb2.PRECISION_INT4)  # weight-only: float activations
    FP8 = ("fp8", 8, "fp32", common_pb2.PRECISION_FP8)  # E4M3 weights, weight-only

    weight_bits: int  # bits per stored weight
    proto: int  # the common_pb2.Precision value
    _activations: str

    def __new__(cls, name: str, weight_bits: int, activations: str, proto: int) -> Precision:
        member = str.__new__(cls, name)
        member._value_ = name
        member.weight_bits = weight_bits
        member._activations = activations
        member.proto = proto
        return member

    def __str__(self) -> str:
        """The key string, on every Python version (f-strings, argparse, messages)."""
        return self.value

    @classmethod
    def _missing_(cls, value: object) -> Precision:
        raise ValueError(f"unknown precision {value!r}; allowed: {', '.join(p.value for p in cls)}")

    @property
    def activations(self) -> Precision:
        """The number type of the activations around the kernel: int8 quantizes them, fp16 casts
        them, int4 weight-only keeps them float. A change between consecutive layers costs a
        conversion the runtime inserts."""
        return Precision(self._activations)

    @property
    def weight_only(self) -> bool:
        """Only the weights are stored narrower; the kernel computes on float activations."""
        return self.activations is not self

    @classmethod
    def from_proto(cls, value: int) -> Precision:
        """common_pb2.PRECISION_INT8 -> Precision.INT8."""
        for precision in cls:
            if precision.proto == value:
                return precision
        names = [common_pb2.Precision.Name(p.proto) for p in cls]
        raise ValueError(f"precision enum value {value} is unset or unknown; allowed: {names}")


def device_precisions(info: agent_pb2.DeviceInfo) -> tuple[Precision, ...]:
    """The precisions a device's probe found running, in declaration order (the wire's)."""
    runs = {Precision.from_proto(p.precision) for p in info.precisions if p.supported}
    return tuple(p for p in Precision if p in runs)


def int8_exact_weight_bits(info: agent_pb2.DeviceInfo) -> int | None:
    """The widest int8 weights the device's int8 kernels sum exactly, as its probe measured: 8,
    or 7 where pairs of uint8 x int8 products saturate at int16; None where int8 does not run or
    the probe did not say (an older agent)."""
    for p in info.precisions:
        if p.precision == Precision.INT8.proto and p.supported and p.HasField("exact_weight_bits"):
            return p.exact_weight_bits
    return None
