"""Property-based tests (hypothesis): a well-formed op key canonicalises and round-trips through
JSON and protobuf with its hash; malformed and mutated keys fail as OpKeyError and nothing else;
random and mutated requests to a real agent (Profile, Benchmark, Reprofile) and to every RPC of
the `lut serve` front never crash them, never come back UNKNOWN and never lose what is stored."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from device_agent.config import MeasurementDefaults, NightlyConfig
from device_agent.server import Agent
from host.agent_client import AgentClient, AgentTarget
from lut_store.grpc_front import LutServer
from lut_store.grpc_store import entry_to_proto, version_to_proto
from lut_store.keys import ops
from lut_store.keys.ops import NCHW, ConvSpec
from lut_store.opkey import OpKey, OpKeyError
from lut_store.records import Version
from lut_store.sqlstore import SqliteStore
from lut_store.store import open_store
from protos.hadmc.v1 import agent_pb2, common_pb2, lut_pb2, lut_pb2_grpc
from tests.conftest import quick_config
from tests.helpers import small_cnn
from tests.test_store import FP, FP2, ok_entry, sealed_version
from tests.test_store import KEYS as STORE_KEYS

PRECISIONS = st.sampled_from(["fp32", "fp16", "int8", "int4", "fp8"])
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
    results; Benchmark: a stream of requests; Reprofile: one request, one response); the status
    it answers with."""
    with grpc.insecure_channel(agent.address) as channel:
        path = f"/hadmc.v1.DeviceAgent/{method}"
        try:
            if method == "Profile":
                for _ in channel.unary_stream(path)(payloads[0], timeout=60):
                    pass
            elif method == "Reprofile":
                channel.unary_unary(path)(payloads[0], timeout=60)
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


# --- Reprofile: the nightly trigger of an agent that has a store --------------------------
TINY_GRID = 'precisions = ["fp32"]\n[[gemm]]\nbatch = 1\nin_features = 8\nout_features = 4\n'
FAST = MeasurementDefaults(
    warmup_runs=1, min_runs=5, max_runs=5, max_time_s=0.05, max_attempts=1, interference_max_cores=64.0, min_window_s=0
)


@pytest.fixture(scope="module")
def reprofiling_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, str]]:
    """An agent with a [nightly] SQLite store (holding another device's version) and a one-key
    grid, its at-start run done."""
    from tests.test_nightly import _wait_for_state

    tmp = tmp_path_factory.mktemp("reprofile")
    grid = tmp / "grid.toml"
    grid.write_text(TINY_GRID)
    store_url = f"sqlite:///{tmp / 'lut.sqlite'}"
    nightly = NightlyConfig(store=store_url, grids=[str(grid)], state_file=tmp / "nightly.json")
    with open_store(store_url) as store:
        sealed_version(store, fp=FP2)  # another device's version, there before the agent
    running = Agent(quick_config(nightly=nightly, profile=FAST, benchmark=FAST)).start()
    try:
        _wait_for_state(nightly.state_file)  # first start with a grid: the agent runs once by itself
        yield running, store_url
    finally:
        running.stop(grace_s=1.0)


def _sealed(store_url: str) -> dict[int, tuple[Version, list]]:
    """Every sealed version of the store with its entries."""
    with open_store(store_url) as store:
        return {v.id: (v, list(store.entries(v.id))) for v in store.versions() if v.status == "sealed"}


REASONS = st.text(max_size=40) | st.sampled_from(["", "manual", "\x00", "é" * 5000, "{" * 2000])


@settings(max_examples=40, deadline=None, suppress_health_check=SLOW)
@given(REASONS, st.data())
def test_mutated_reprofile_requests_never_crash_the_agent_or_lose_a_version(reprofiling_agent, reason, data):
    agent, store_url = reprofiling_agent
    wire = bytearray(agent_pb2.ReprofileRequest(reason=reason).SerializeToString())
    how = data.draw(st.sampled_from(["as is", "flipped", "trailing bytes", "random"]))
    if how == "flipped" and wire:
        for _ in range(data.draw(st.integers(1, 3))):
            wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    elif how == "trailing bytes":  # well-formed unknown fields, or bytes that cut a field short
        wire += data.draw(st.sampled_from([b"\x10\x01", b"\x1a\x03abc", b"\xf8\x01\x00"]) | st.binary(max_size=12))
    elif how == "random":
        wire = bytearray(data.draw(st.binary(max_size=48)))
    try:
        agent_pb2.ReprofileRequest.FromString(bytes(wire))
        decodes = True
    except Exception as exc:  # protobuf's DecodeError: the daemon must refuse it cleanly
        assert type(exc).__name__ == "DecodeError"
        decodes = False
    before = _sealed(store_url)
    code = _call(agent, "Reprofile", [bytes(wire)])
    event(code.name)
    assert code != grpc.StatusCode.UNKNOWN
    after = _sealed(store_url)
    assert {vid: after.get(vid) for vid in before} == before  # nothing sealed was lost or changed
    if decodes:  # any reason at all is a run, sealed into one new version
        assert code == grpc.StatusCode.OK and len(after) == len(before) + 1
    else:  # refused by grpc before the handler ran
        assert code == grpc.StatusCode.INTERNAL
    with AgentClient(AgentTarget(agent.address), retries=1) as client:
        assert client.health() == "SERVING"


# --- every RPC of the `lut serve` front ---------------------------------------------------
LUT_SERVICE = lut_pb2.DESCRIPTOR.services_by_name["LutStoreService"]
MODEL = b"fuzzed model bytes"
# JSON a `*_json` field may hold that a store must take or refuse cleanly: no object, non-finite
# numbers, cut short, nested deeper than real documents, an integer past Python's digit limit,
# nesting near and past the recursion limit.
HOSTILE_JSON = [
    "{}",
    "[]",
    "null",
    "NaN",
    '{"a": NaN}',
    '{"a": 1e999}',
    "{",
    '{"a": ' * 65 + "1" + "}" * 65,
    '{"a": ' * 980 + "1" + "}" * 980,
    '{"a": ' + "7" * 5000 + "}",
    "[" * 50_000,
    '{"a": ' * 50_000,
]
# Other strings: empty, known devices and holders, a NUL, long text.
NAMES = ["", FP, FP2, "holder", "\x00", "x" * 70_000]


class Front:
    """A served store with a sealed version, an open one held by 'holder' and a registered model."""

    def __init__(self, server: LutServer, sealed: Version, entries: list, open_id: int, model_sha256: str) -> None:
        self.server = server
        self.sealed = sealed
        self.entries = entries
        self.open_id = open_id
        self.model_sha256 = model_sha256

    def __repr__(self) -> str:  # short in hypothesis' report of a failing example
        return f"Front({self.server.address}, sealed={self.sealed.id}, open={self.open_id})"


@pytest.fixture()
def front(tmp_path) -> Iterator[Front]:
    with SqliteStore(tmp_path / "served.sqlite") as backing:
        sealed = sealed_version(backing)
        held = backing.acquire_build(FP, "search", "holder", lease_s=600)
        backing.add_entries(held.version.id, [ok_entry(STORE_KEYS[0], 7.0)], "holder")
        backing.register_model(FP, "fuzzed.onnx", MODEL, 1, (STORE_KEYS[0].hash,))
        server = LutServer(backing).start()
        try:
            entries = list(backing.entries(sealed.id))
            yield Front(server, sealed, entries, held.version.id, hashlib.sha256(MODEL).hexdigest())
        finally:
            server.stop(grace_s=1.0)


def _valid_requests(front: Front, method: str) -> list[Message]:
    """A well-formed request of `method` against the front's records (a list: RegisterModel's stream)."""
    sealed = front.sealed
    imported = dataclasses.replace(sealed, uid="f" * 32, source="import")
    header = lut_pb2.RegisterModelHeader(
        fingerprint_hash=FP,
        name="again.onnx",
        model_sha256=front.model_sha256,
        size_bytes=len(MODEL),
        batch_size=1,
        kernel_hashes=[STORE_KEYS[1].hash],
    )
    requests: dict[str, Message | list[Message]] = {
        "EnsureDevice": lut_pb2.EnsureDeviceRequest(fingerprint_hash=FP2, fingerprint_json='{"cpu": {"model": "x"}}'),
        "ListDevices": lut_pb2.ListDevicesRequest(),
        "AcquireBuild": lut_pb2.AcquireBuildRequest(
            fingerprint_hash=FP, source=lut_pb2.LUT_VERSION_SOURCE_SEARCH, owner="fuzzer", lease_s=60
        ),
        "RenewLease": lut_pb2.RenewLeaseRequest(version_id=front.open_id, owner="holder", lease_s=60),
        "AddEntries": lut_pb2.AddEntriesRequest(
            version_id=front.open_id, entries=[entry_to_proto(ok_entry(STORE_KEYS[1]))], owner="holder"
        ),
        "Seal": lut_pb2.SealRequest(version_id=front.open_id, owner="holder"),
        "Abandon": lut_pb2.AbandonRequest(version_id=front.open_id),
        "GetVersion": lut_pb2.GetVersionRequest(version_id=sealed.id),
        "ListVersions": lut_pb2.ListVersionsRequest(fingerprint_hash=FP),
        "Entries": lut_pb2.EntriesRequest(version_id=sealed.id),
        "Lookup": lut_pb2.LookupRequest(version_id=sealed.id, key_hashes=[k.hash for k in STORE_KEYS[:2]]),
        "ImportVersion": lut_pb2.ImportVersionRequest(
            device=lut_pb2.LutDevice(fingerprint_hash=FP, fingerprint_json="{}", first_seen_unix_s=1.0),
            version=version_to_proto(imported),
            entries=[entry_to_proto(e) for e in front.entries],
            parent_uid=sealed.uid,
        ),
        "RegisterModel": [lut_pb2.RegisterModelRequest(header=header), lut_pb2.RegisterModelRequest(onnx_chunk=MODEL)],
        "ListModels": lut_pb2.ListModelsRequest(fingerprint_hash=FP),
        "ModelBytes": lut_pb2.ModelBytesRequest(model_sha256=front.model_sha256),
        "GetModelLimit": lut_pb2.GetModelLimitRequest(),
        "SetModelLimit": lut_pb2.SetModelLimitRequest(limit=4),
    }
    found = requests[method]
    return found if isinstance(found, list) else [found]


def _scalar(front: Front, field: FieldDescriptor) -> st.SearchStrategy[Any]:
    """Junk for a scalar field: edge values, ids and names of the front's records, random values."""
    if field.type == FieldDescriptor.TYPE_STRING:
        if field.name.endswith("_json"):
            return st.sampled_from(HOSTILE_JSON) | st.text(max_size=16)
        return st.sampled_from([*NAMES, *HOSTILE_JSON, front.sealed.uid, front.model_sha256]) | st.text(max_size=16)
    ids = st.sampled_from([front.sealed.id, front.open_id, 0, -1, 2**63 - 1, -(2**63)])
    return {
        FieldDescriptor.TYPE_INT64: ids | st.integers(-(2**63), 2**63 - 1),
        FieldDescriptor.TYPE_INT32: st.sampled_from([0, -1, 2**31 - 1, -(2**31)]) | st.integers(-(2**31), 2**31 - 1),
        FieldDescriptor.TYPE_UINT64: st.sampled_from([0, 1, 2**63, 2**64 - 1]) | st.integers(0, 2**64 - 1),
        FieldDescriptor.TYPE_UINT32: st.sampled_from([0, 1, 2**32 - 1]) | st.integers(0, 2**32 - 1),
        FieldDescriptor.TYPE_DOUBLE: st.floats(),
        FieldDescriptor.TYPE_BOOL: st.booleans(),
        FieldDescriptor.TYPE_ENUM: st.integers(-2, 6),  # proto3 enums are open: unknown numbers arrive too
        FieldDescriptor.TYPE_BYTES: st.just(MODEL) | st.binary(max_size=32),
    }[field.type]


def _junk_message(data: st.DataObject, descriptor: Descriptor, front: Front, depth: int = 0) -> Message:
    """A message of `descriptor` whose fields (each set or not) hold junk, nested messages too."""
    message = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if depth < 2 and data.draw(st.booleans()):
            _set_junk(data, message, field, front, depth)
    return message


def _set_junk(data: st.DataObject, message: Message, field: FieldDescriptor, front: Front, depth: int) -> None:
    def value() -> Any:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return _junk_message(data, field.message_type, front, depth + 1)
        return data.draw(_scalar(front, field))

    message.ClearField(field.name)
    if field.is_repeated:
        target = getattr(message, field.name)
        for _ in range(data.draw(st.integers(0, 3))):
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                target.add().CopyFrom(value())
            else:
                target.append(value())
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(message, field.name).CopyFrom(value())
    else:
        setattr(message, field.name, value())


def _mutated(data: st.DataObject, front: Front, valid: Message) -> bytes:
    """`valid` as sent, with junk fields, all junk, with flipped bytes, or random bytes instead."""
    how = data.draw(st.sampled_from(["as is", "junk fields", "all junk", "flipped", "random"]))
    fields = list(valid.DESCRIPTOR.fields)
    if how == "junk fields" and fields:
        message = type(valid)()
        message.CopyFrom(valid)
        for field in data.draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique_by=lambda f: f.number)):
            _set_junk(data, message, field, front, 0)
        return message.SerializeToString()
    if how == "all junk":
        return _junk_message(data, valid.DESCRIPTOR, front).SerializeToString()
    wire = bytearray(valid.SerializeToString())
    if how == "flipped" and wire:
        for _ in range(data.draw(st.integers(1, 4))):
            wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    elif how == "random" or (how != "as is" and not wire):
        wire = bytearray(data.draw(st.binary(max_size=64)))
    return bytes(wire)


def _lut_call(channel: grpc.Channel, method: MethodDescriptor, payloads: list[bytes]) -> tuple[grpc.StatusCode, str]:
    """Send raw request bytes to one RPC of the front (reading any response stream to its end)."""
    path = f"/{LUT_SERVICE.full_name}/{method.name}"
    try:
        if method.client_streaming:
            channel.stream_unary(path)(iter(payloads), timeout=30)
        elif method.server_streaming:
            for _ in channel.unary_stream(path)(payloads[0], timeout=30):
                pass
        else:
            channel.unary_unary(path)(payloads[0], timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("method", list(LUT_SERVICE.methods), ids=lambda m: m.name)
@settings(max_examples=40, deadline=None, suppress_health_check=SLOW)
@given(data=st.data())
def test_mutated_requests_to_every_lut_front_rpc_never_answer_unknown_or_lose_a_sealed_version(front, method, data):
    valid = _valid_requests(front, method.name)
    if method.client_streaming:  # any order of the valid parts, repeats and gaps included, each maybe mutated
        order = data.draw(st.just(list(range(len(valid)))) | st.lists(st.integers(0, len(valid) - 1), max_size=4))
        payloads = [_mutated(data, front, valid[i]) for i in order]
    else:
        payloads = [_mutated(data, front, valid[0])]
    with grpc.insecure_channel(front.server.address) as channel:
        code, details = _lut_call(channel, method, payloads)
        event(code.name)
        assert code != grpc.StatusCode.UNKNOWN, details
        if code == grpc.StatusCode.INTERNAL:  # only grpc's own refusal of bytes that are no request
            assert details == "Exception deserializing request!"
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=LUT_SERVICE.full_name), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        listed = channel.unary_unary(f"/{LUT_SERVICE.full_name}/ListDevices")(b"", timeout=5)
        assert FP in {d.fingerprint_hash for d in lut_pb2.ListDevicesResponse.FromString(listed).devices}
    store = front.server.store
    assert store.version(front.sealed.id) == front.sealed
    assert list(store.entries(front.sealed.id)) == front.entries


@pytest.mark.parametrize(
    "texts",
    [
        ['{"a": ' + "7" * 5000 + "}"],
        ["[" * 50_000, '{"a": ' * 50_000],
        ['{"a": ' * depth + "1" + "}" * depth for depth in range(900, 1001)],
    ],
    ids=["long integer", "past the recursion limit", "near the recursion limit"],
)
def test_json_past_the_parsers_limits_is_invalid_argument(front, texts):
    """Found by the fuzzing above: json.loads raises ValueError (not JSONDecodeError) for an
    integer past Python's digit limit and RecursionError for deeper nesting than the recursion
    limit, and a document just under it parsed but json.dumps ran out of stack storing it (which
    depths did depends on the stack's depth at the call): each came back UNKNOWN."""
    source = lut_pb2.LUT_VERSION_SOURCE_SEARCH
    with grpc.insecure_channel(front.server.address) as channel:
        stub = lut_pb2_grpc.LutStoreServiceStub(channel)
        for text in texts:
            for method, request, field in [
                (
                    stub.EnsureDevice,
                    lut_pb2.EnsureDeviceRequest(fingerprint_hash=FP2, fingerprint_json=text),
                    "fingerprint_json",
                ),
                (
                    stub.AcquireBuild,
                    lut_pb2.AcquireBuildRequest(fingerprint_hash=FP, source=source, owner="o", settings_json=text),
                    "settings_json",
                ),
            ]:
                with pytest.raises(grpc.RpcError) as exc:
                    method(request, timeout=5)
                assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert exc.value.details().startswith(field)
