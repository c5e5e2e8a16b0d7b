"""The one precision type: its key strings, what each precision stores and computes in, the wire."""

from __future__ import annotations

import json

import pytest

from lut_store.keys.ops import NCHW, ConvSpec, conv
from lut_store.opkey import OpKey
from lut_store.precision import Precision, device_precisions
from protos.hadmc.v1 import agent_pb2, common_pb2


def test_a_precision_is_its_key_string():
    assert [p.value for p in Precision] == ["fp32", "fp16", "bf16", "int8", "int4", "fp8"]
    assert Precision.INT8 == "int8" and Precision("int4") is Precision.INT4W
    assert json.dumps({"precision": Precision.INT4W}) == '{"precision": "int4"}'
    assert f"{Precision.FP16:<6}|" == "fp16  |" and str(Precision.INT4W) == "int4"
    assert {"int8": 1}[Precision.INT8] == 1  # hashes as its string: dicts keyed either way agree


def test_op_key_hashes_do_not_change_with_the_type():
    by_name = conv(NCHW(1, 16, 8, 8), ConvSpec(16, 3), precision="int4")
    by_type = conv(NCHW(1, 16, 8, 8), ConvSpec(16, 3), precision=Precision.INT4W)
    assert by_name.hash == by_type.hash and by_name.precision is Precision.INT4W
    assert OpKey.from_json(by_name.canonical_json()).precision is Precision.INT4W


def test_each_precision_says_what_it_stores_and_computes_in():
    assert [p.weight_bits for p in Precision] == [32, 16, 16, 8, 4, 8]
    assert [p.activations for p in Precision] == [
        Precision.FP32,
        Precision.FP16,
        Precision.BF16,
        Precision.INT8,
        Precision.FP32,
        Precision.FP32,
    ]
    assert [p for p in Precision if p.weight_only] == [Precision.INT4W, Precision.FP8]


def test_the_wire_enum_both_ways():
    assert Precision.INT8.proto == common_pb2.PRECISION_INT8
    assert all(Precision.from_proto(p.proto) is p for p in Precision)
    with pytest.raises(ValueError, match="precision enum value 0 is unset or unknown; allowed:.*PRECISION_INT4"):
        Precision.from_proto(common_pb2.PRECISION_UNSPECIFIED)


@pytest.mark.parametrize("name", ["int16", "INT8", 8, "fp8_e5m2"])
def test_an_unknown_name_lists_the_allowed_ones(name):
    with pytest.raises(ValueError, match=r"unknown precision .*; allowed: fp32, fp16, bf16, int8, int4, fp8"):
        Precision(name)


def test_the_device_probe_gives_its_running_precisions_in_declaration_order():
    info = agent_pb2.DeviceInfo()
    for p, supported in ((Precision.INT8, True), (Precision.INT4W, False), (Precision.FP32, True)):
        info.precisions.add(precision=p.proto, supported=supported)
    assert device_precisions(info) == (Precision.FP32, Precision.INT8)
