import collections
import json

import pytest

from lut_store.fingerprint import differences, fingerprint_hash
from lut_store.keys import ops
from lut_store.keys.ops import NCHW, ConvSpec
from lut_store.keys.sweep import ConvLayer, HeadLayer, PoolLayer, sweep_keys
from lut_store.opkey import OpKey, OpKeyError, OpNode, TensorSpec
from protos.hadmc.v1 import common_pb2


def _conv_key(**attrs):
    inputs = (TensorSpec((1, 16, 8, 8)), TensorSpec((32, 16, 3, 3), role="weight"))
    return OpKey(inputs, (OpNode("Conv", ("i0", "i1"), attrs),))


def test_implicit_defaults_give_the_same_key_as_explicit_ones():
    implicit = _conv_key(pads=(1, 1, 1, 1))
    explicit = _conv_key(pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1, kernel_shape=[3, 3])
    assert implicit == explicit
    assert implicit.hash == explicit.hash
    assert implicit.nodes[0].attrs["kernel_shape"] == (3, 3)


def test_attribute_order_and_float_precision_do_not_change_the_hash():
    a = OpKey((TensorSpec((1, 4)),), (OpNode("LeakyRelu", ("i0",), {"alpha": 0.1}),))
    b = OpKey((TensorSpec((1, 4)),), (OpNode("LeakyRelu", ("i0",), {"alpha": 0.10000000149011612}),))
    assert a.hash == b.hash
    assert a.hash != OpKey((TensorSpec((1, 4)),), (OpNode("LeakyRelu", ("i0",), {"alpha": 0.2}),)).hash


@pytest.mark.parametrize(
    "key",
    [
        ops.conv(NCHW(1, 64, 16, 16), ConvSpec(64, 3), fuse=("add", "relu")),
        ops.conv(NCHW(2, 32, 15, 15), ConvSpec(32, 3, stride=2, groups=32), fuse=("relu",), precision="int8"),
        ops.gemm(1, 512, 6, precision="fp16"),
        ops.matmul((1, 128), (128, 64), precision="int4"),
        ops.gemm(1, 64, 10, precision="fp8"),
        ops.pool("max", NCHW(1, 64, 32, 32), 3, stride=2, padding=1),
        ops.concat([(1, 32, 8, 8), (1, 16, 8, 8)]),
        OpKey((TensorSpec((2, 6)), TensorSpec((2,), "int64", "constant", (3, 4))), (OpNode("Reshape", ("i0", "i1")),)),
    ],
    ids=lambda k: k.kind,
)
def test_round_trips_through_proto_json_and_dict(key):
    wire = common_pb2.OpKey.FromString(key.to_proto().SerializeToString())
    assert OpKey.from_proto(wire) == key
    assert OpKey.from_json(key.canonical_json()) == key
    assert OpKey.from_proto(wire).hash == key.hash
    assert json.loads(key.canonical_json())["precision"] == key.precision


def test_kind_and_outputs_of_a_fused_chain():
    key = ops.conv(NCHW(1, 8, 8, 8), ConvSpec(8, 3), fuse=("add", "relu"))
    assert key.kind == "conv+add+relu"
    assert key.output_refs() == ["n2"]
    assert len(key.inputs) == 4 and key.inputs[3].shape == (1, 8, 8, 8)


def test_canonical_form_is_the_stored_contract():
    """Changing the canonical form orphans every stored LUT entry: pin its shape."""
    key = ops.conv(NCHW(1, 16, 8, 8), ConvSpec(16, 3), fuse=("relu",))
    again = ops.conv(NCHW(1, 16, 8, 8), ConvSpec(16, 3, padding=1), fuse=("relu",))
    assert again.hash == key.hash
    assert key.canonical_json().startswith('{"inputs":[{"dtype":"float32","role":"activation","shape":[1,16,8,8]}')


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: TensorSpec((1, 0, 4)), "dimension 0"),
        (lambda: TensorSpec((1, -3, 4)), "dimension -3"),
        (lambda: TensorSpec((1, 2.5)), "dimension 2.5"),
        (lambda: TensorSpec((1,), "complex64"), "unknown dtype"),
        (lambda: TensorSpec((2,), "int64", "constant", (1,)), "needs 2 values"),
        (lambda: OpKey((TensorSpec((1, 4)),), (OpNode("Relu", ("i1",)),)), "has 1 inputs"),
        (lambda: OpKey((TensorSpec((1, 4)),), (OpNode("Relu", ("n0",)),)), "not an earlier node"),
        (lambda: OpKey((TensorSpec((1, 4)),), (OpNode("Relu", ("x",)),)), "not 'i<k>'"),
        (lambda: OpKey((TensorSpec((1, 4)), TensorSpec((1, 4))), (OpNode("Relu", ("i0",)),)), "not used"),
        (lambda: OpKey((TensorSpec((1, 4)),), ()), "at least one operator"),
        (lambda: OpKey((TensorSpec((1, 4), role="weight"),), (OpNode("Relu", ("i0",)),)), "activation input"),
        (lambda: OpKey((TensorSpec((1, 4)),), (OpNode("Relu", ("i0",)),), "int3"), "unknown precision"),
        (lambda: OpKey((TensorSpec((1, 4)),), (OpNode("Relu", ("i0",), domain="my.custom"),)), "not allowed"),
        (lambda: OpKey((TensorSpec((1, 4)),), (OpNode("Re lu", ("i0",)),)), "not an operator name"),
        # a double just above float32's largest value (found by tests/test_fuzz.py on mutated bytes)
        (lambda: OpNode("Gemm", ("i0", "i1"), {"alpha": 3.402823669209385e38}), "beyond float32's range"),
    ],
)
def test_malformed_keys_are_refused_with_a_named_reason(build, message):
    with pytest.raises(OpKeyError, match=message):
        build()


def test_unspecified_precision_on_the_wire_is_refused():
    msg = ops.elementwise("Relu", (1, 4)).to_proto()
    msg.precision = common_pb2.PRECISION_UNSPECIFIED
    with pytest.raises(OpKeyError, match="unset or unknown"):
        OpKey.from_proto(msg)


def test_fingerprint_hash_covers_latency_fields_only():
    doc = {
        "profiler_version": "1",
        "cpu": {"model": "X", "physical_cores": 2},
        "intra_op_threads": 2,
        "hostname": "a",
        "memory_total_bytes": "100",
    }
    same_device_elsewhere = {**doc, "hostname": "b", "memory_total_bytes": "200"}
    more_threads = {**doc, "intra_op_threads": 1}
    assert fingerprint_hash(doc) == fingerprint_hash(same_device_elsewhere)
    assert fingerprint_hash(doc) != fingerprint_hash(more_threads)
    assert differences(doc, more_threads) == {"intra_op_threads": (2, 1)}


def test_the_width_sweep_keys_every_width_pair_and_never_prunes_the_model_input():
    stem = ConvLayer(NCHW(1, 3, 16, 16), ConvSpec(16, 3, stride=2), ("relu",), fixed_input=True)
    pool = PoolLayer("max", stem.output, 2, 2)
    body = ConvLayer(pool.output, ConvSpec(32, 3), ("add", "relu"))
    keys = sweep_keys([stem, pool, body, HeadLayer(body.output, 10)], ["fp32", "int8"], keep_ratios=(0.5, 1.0))
    assert len({k.hash for k in keys}) == len(keys)
    # Per precision: the stem at 2 output widths, the pool at 2, the body at 2 x 2, the head at 2.
    assert collections.Counter(k.kind for k in keys) == {
        "conv+relu": 2 * 2,
        "maxpool": 2 * 2,
        "conv+add+relu": 2 * 4,
        "globalaveragepool": 2 * 2,
        "gemm": 2 * 2,
    }
    assert {k.inputs[0].shape for k in keys if k.kind == "conv+relu"} == {(1, 3, 16, 16)}
    assert {k.inputs[0].shape for k in keys if k.kind == "maxpool"} == {(1, 8, 8, 8), (1, 16, 8, 8)}
    assert {k.inputs[1].shape[:2] for k in keys if k.kind == "gemm"} == {(10, 16), (10, 32)}
