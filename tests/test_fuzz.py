"""Property-based tests (hypothesis): a well-formed op key canonicalises and round-trips through
JSON and protobuf with its hash; malformed and mutated keys fail as OpKeyError and nothing else;
random and mutated requests to a real agent never crash it and never come back UNKNOWN."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_agent.server import Agent
from host.agent_client import AgentClient, AgentTarget
from lut_store.keys import ops
from lut_store.keys.ops import NCHW, ConvSpec
from lut_store.opkey import OpKey, OpKeyError
from protos.hadmc.v1 import agent_pb2, common_pb2
from tests.conftest import quick_config
from tests.helpers import small_cnn

PRECISIONS = st.sampled_from(["fp32", "fp16", "int8", "int4"])
SMALL = st.integers(1, 12)


@st.composite
def conv_keys(draw: st.DrawFn) -> OpKey:
    groups = draw(st.sampled_from([1, 2]))
    x = NCHW(draw(st.integers(1, 2)), groups * draw(SMALL), draw(st.integers(3, 12)), draw(st.integers(3, 12)))
    spec = ConvSpec(
        groups * draw(SMALL),
        draw(st.sampled_from([1, 3])),
        draw(st.sampled_from([1, 2])),
        groups=groups,
        bias=draw(st.booleans()),
    )
    return ops.conv(x, spec, draw(st.sampled_from([(), ("relu",), ("add", "relu")])), draw(PRECISIONS))


@st.composite
def other_keys(draw: st.DrawFn) -> OpKey:
    shape = draw(st.lists(SMALL, min_size=1, max_size=4))
    precision = draw(PRECISIONS)
    kind = draw(st.sampled_from(["elementwise", "gemm", "softmax", "concat", "pool"]))
    if kind == "elementwise":
        return ops.elementwise(draw(st.sampled_from(["Relu", "Sigmoid", "Add", "Mul"])), shape, precision)
    if kind == "gemm":
        return ops.gemm(draw(SMALL), draw(SMALL), draw(SMALL), draw(st.booleans()), precision)
    if kind == "softmax":
        return ops.softmax(shape, draw(st.integers(-len(shape), len(shape) - 1)), precision)
    if kind == "concat":
        return ops.concat([shape, shape], draw(st.integers(0, len(shape) - 1)), precision)
    x = NCHW(1, draw(SMALL), draw(st.integers(4, 12)), draw(st.integers(4, 12)))
    return ops.pool(draw(st.sampled_from(["max", "avg"])), x, draw(st.sampled_from([2, 3])), precision=precision)


KEYS = st.one_of(conv_keys(), other_keys())


@given(KEYS, st.sampled_from(["isolated", "in-model"]))
def test_a_well_formed_key_round_trips_with_its_hash(key, context):
    key = key.with_context(context)
    again = OpKey.from_json(key.canonical_json())
    assert again == key and again.hash == key.hash and again.canonical_json() == key.canonical_json()
    wire = OpKey.from_proto(common_pb2.OpKey.FromString(key.to_proto().SerializeToString()))
    assert wire == key and wire.hash == key.hash


# JSON-like values a mutation may put anywhere in a key's dict.
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside nested dicts and lists."""
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


def _replace(value: object, path: tuple, new: object) -> object:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    assert isinstance(value, list)
    return [_replace(v, rest, new) if i == head else v for i, v in enumerate(value)]


@given(KEYS, st.data())
def test_a_mutated_key_is_a_key_or_an_op_key_error_never_a_crash(key, data):
    doc = key.to_dict()
    path = data.draw(st.sampled_from(_paths(doc)))
    mutated = _replace(doc, path, data.draw(JUNK))
    try:
        again = OpKey.from_dict(mutated)
    except OpKeyError:
        return
    assert OpKey.from_json(again.canonical_json()) == again  # whatever is accepted is canonical


@given(KEYS, st.data())
def test_mutated_protobuf_bytes_decode_to_a_key_or_fail_cleanly(key, data):
    wire = bytearray(key.to_proto().SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    try:
        msg = common_pb2.OpKey.FromString(bytes(wire))
    except Exception as exc:  # protobuf's DecodeError: refused before any key is built
        assert type(exc).__name__ == "DecodeError"
        return
    try:
        OpKey.from_proto(msg)
    except OpKeyError:
        pass


@pytest.fixture(scope="module")
def fuzzed_agent():
    running = Agent(quick_config(max_tensor_elements=1 << 16, key_timeout_s=5.0)).start()
    yield running
    running.stop(grace_s=1.0)


QUICK = common_pb2.MeasurementSettings(warmup_runs=1, min_runs=5, max_runs=5, max_time_s=0.05, max_attempts=1)


def _call(agent: Agent, method: str, payloads: list[bytes]) -> grpc.StatusCode:
    """Send raw request bytes to one of the agent's methods (Profile: one request, a stream of
    results; Benchmark: a stream of requests); the status it answers with."""
    with grpc.insecure_channel(agent.address) as channel:
        path = f"/hadmc.v1.DeviceAgent/{method}"
        try:
            if method == "Profile":
                for _ in channel.unary_stream(path)(payloads[0], timeout=60):
                    pass
            else:
                channel.stream_unary(path)(iter(payloads), timeout=60)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


SLOW = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


@settings(max_examples=40, deadline=None, suppress_health_check=SLOW)
@given(st.lists(KEYS, min_size=1, max_size=3), st.data())
def test_mutated_profile_requests_never_crash_the_agent_or_answer_unknown(fuzzed_agent, keys, data):
    request = agent_pb2.ProfileRequest(keys=[k.to_proto() for k in keys], settings=QUICK)
    wire = bytearray(request.SerializeToString())
    for _ in range(data.draw(st.integers(0, 3))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    try:  # keep the measurement short whatever the mutation did to the settings
        parsed = agent_pb2.ProfileRequest.FromString(bytes(wire))
        parsed.settings.CopyFrom(QUICK)
        payload = parsed.SerializeToString()
    except Exception:
        payload = bytes(wire)  # undecodable: the daemon must refuse it cleanly
    assert _call(fuzzed_agent, "Profile", [payload]) != grpc.StatusCode.UNKNOWN
    with AgentClient(AgentTarget(fuzzed_agent.address), retries=1) as client:
        assert client.health() == "SERVING"


@settings(max_examples=25, deadline=None, suppress_health_check=SLOW)
@given(st.data())
def test_mutated_benchmark_uploads_never_crash_the_agent_or_answer_unknown(fuzzed_agent, data):
    model = bytearray(small_cnn().SerializeToString())
    for _ in range(data.draw(st.integers(1, 6))):
        model[data.draw(st.integers(0, len(model) - 1))] = data.draw(st.integers(0, 255))
    size = data.draw(st.sampled_from([len(model), 0, len(model) + 1, 2**63]))
    header = agent_pb2.BenchmarkHeader(
        model_size_bytes=size, batch_size=data.draw(st.sampled_from([0, 1, 2**32 - 1])), settings=QUICK
    )
    parts = [agent_pb2.BenchmarkRequest(header=header), agent_pb2.BenchmarkRequest(model_chunk=bytes(model))]
    if data.draw(st.booleans()):
        parts.reverse()  # chunks before the header
    code = _call(fuzzed_agent, "Benchmark", [p.SerializeToString() for p in parts])
    assert code != grpc.StatusCode.UNKNOWN
    with AgentClient(AgentTarget(fuzzed_agent.address), retries=1) as client:
        assert client.health() == "SERVING"
