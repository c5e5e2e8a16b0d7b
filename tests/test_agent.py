"""The real agent on 127.0.0.1:0, real onnxruntime: profiling, benchmarking, bad input."""

from __future__ import annotations

import hashlib
import threading
import time

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from device_agent import fingerprint
from host.agent_client import AgentClient, AgentError, AgentTarget
from lut_store.keys import ops
from lut_store.keys.ops import NCHW, ConvSpec
from lut_store.opkey import OpKey, OpNode, TensorSpec
from lut_store.precision import int8_exact_weight_bits
from protos.hadmc.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from tests.helpers import exact_int8_weight_bits, small_cnn

KeyError_ = agent_pb2.KeyError


def test_device_info_describes_this_machine(client):
    info = client.info()
    fp = info.fingerprint
    assert fp.execution_provider == "CPUExecutionProvider"
    assert fp.onnxruntime_version == ort.__version__
    assert fp.cpu.logical_cores >= 1 and fp.intra_op_threads == 1
    assert fp.memory_total_bytes > 0
    assert "gpus" in fp.notes or len(fp.gpus) > 0
    assert info.fingerprint_hash == fingerprint.hash_of(fp)
    supported = {p.precision: p for p in info.precisions}
    assert supported[common_pb2.PRECISION_FP32].supported
    assert "Conv" in supported[common_pb2.PRECISION_FP32].note
    # The int8 kernels' exactness, as the probe measured it and as this test measures it.
    assert int8_exact_weight_bits(info) == exact_int8_weight_bits()
    assert not supported[common_pb2.PRECISION_FP32].HasField("exact_weight_bits")
    assert info.limits.max_model_bytes > 0 and info.default_settings.min_runs == 10


def test_health_service_reports_serving(client):
    assert client.health() == "SERVING"


REQUIRED_KERNELS = [
    ops.conv(NCHW(1, 16, 16, 16), ConvSpec(32, 3)),
    ops.conv(NCHW(1, 16, 17, 17), ConvSpec(16, 5, stride=2, padding=1, dilation=2, bias=False)),
    ops.conv(NCHW(1, 32, 8, 8), ConvSpec(32, 3, groups=32), fuse=("relu",)),
    ops.conv(NCHW(1, 16, 8, 8), ConvSpec(16, 1, padding=0), fuse=("add", "relu")),
    ops.gemm(1, 64, 10),
    ops.matmul((4, 64), (64, 32)),
    ops.pool("max", NCHW(1, 16, 16, 16), 3, stride=2, padding=1),
    ops.pool("avg", NCHW(1, 16, 16, 16), 2),
    ops.global_avg_pool(NCHW(1, 64, 4, 4)),
    ops.elementwise("Add", (1, 16, 8, 8)),
    ops.elementwise("Relu", (1, 16, 8, 8)),
    ops.batch_norm(NCHW(1, 16, 8, 8)),
    ops.concat([(1, 8, 4, 4), (1, 24, 4, 4)]),
    ops.softmax((2, 10)),
    # Any standard operator, with given constants: Reshape and a Split with two outputs.
    OpKey((TensorSpec((2, 6)), TensorSpec((2,), "int64", "constant", (3, 4))), (OpNode("Reshape", ("i0", "i1")),)),
    OpKey(
        (TensorSpec((1, 8, 4)),), (OpNode("Split", ("i0",), {"axis": 1, "num_outputs": 2}, num_outputs=2),), opset=18
    ),
]


def test_profile_measures_every_required_kernel(client):
    results = list(client.profile(REQUIRED_KERNELS))
    assert [r.index for r in results] == list(range(len(REQUIRED_KERNELS)))
    for key, r in zip(REQUIRED_KERNELS, results, strict=True):
        assert r.WhichOneof("outcome") == "stats", f"{key.describe()}: {r.error.message}"
        s = r.stats
        assert r.key_hash == key.hash
        assert s.n >= 10 and s.median_ms > 0
        assert s.min_ms <= s.p10_ms <= s.median_ms <= s.p90_ms <= s.p99_ms <= s.max_ms
        assert s.latency_ms == s.median_ms  # the default latency of record
        assert s.settings.min_runs == 10 and s.settings.max_time_s == pytest.approx(0.3)
        assert r.environment.measured_at_unix_s > time.time() - 600
        assert "cpu_temp_c" in r.environment.unreadable or r.environment.HasField("cpu_temp_c")


def test_precisions_are_measured_or_reported_unsupported(client):
    conv = ops.conv(NCHW(1, 32, 16, 16), ConvSpec(32, 3), fuse=("relu",))
    relu = ops.elementwise("Relu", (1, 32, 16, 16))
    keys = [OpKey(conv.inputs, conv.nodes, p) for p in ("fp32", "fp16", "int8", "int4", "fp8")]
    keys += [OpKey(relu.inputs, relu.nodes, p) for p in ("int4", "fp8")]
    results = list(client.profile(keys))
    assert all(r.WhichOneof("outcome") == "stats" for r in results[:5]), [r.error.message for r in results]
    assert len({r.key_hash for r in results}) == 7
    assert [r.error.code for r in results[5:]] == [KeyError_.CODE_UNSUPPORTED] * 2
    assert "int4 is weight-only" in results[5].error.message and "fp8 is weight-only" in results[6].error.message


def test_bad_keys_get_precise_errors_and_the_batch_goes_on(client):
    good = ops.elementwise("Relu", (1, 8))
    unknown_op = good.to_proto()
    unknown_op.nodes[0].op_type = "Frobnicate"
    zero_dim = good.to_proto()
    zero_dim.inputs[0].shape[:] = [1, 0]
    negative_dim = good.to_proto()
    negative_dim.inputs[0].shape[:] = [1, -8]
    huge = good.to_proto()
    huge.inputs[0].shape[:] = [1 << 20, 1 << 20]
    no_precision = good.to_proto()
    no_precision.precision = common_pb2.PRECISION_UNSPECIFIED
    twice = ops.conv(NCHW(1, 4, 8, 8), ConvSpec(4, 3)).to_proto()
    twice.nodes[0].attributes.add(name="group", i=3)
    wrong_shape = ops.elementwise("Add", (1, 4)).to_proto()
    wrong_shape.inputs[1].shape[:] = [1, 5]
    bad_group = ops.conv(NCHW(1, 4, 8, 8), ConvSpec(4, 3)).to_dict()
    bad_group["nodes"][0]["attrs"]["group"] = 3  # passes ONNX's checks, fails in the runtime
    keys = [
        unknown_op,
        zero_dim,
        negative_dim,
        huge,
        no_precision,
        twice,
        wrong_shape,
        OpKey.from_dict(bad_group).to_proto(),
        good.to_proto(),
    ]
    results = list(client.profile(keys))
    codes = [r.error.code for r in results[:-1]]
    assert codes == [KeyError_.CODE_INVALID] * 7 + [KeyError_.CODE_FAILED], [r.error.message for r in results]
    messages = [r.error.message for r in results]
    assert "unknown op kind 'Frobnicate'" in messages[0]
    assert "dimension 0" in messages[1] and "dimension -8" in messages[2]
    assert "max_tensor_elements" in messages[3]
    assert "precision" in messages[4]
    assert "given twice" in messages[5]
    assert "reject" in messages[6]
    assert "kernel channels" in messages[7]
    assert results[-1].WhichOneof("outcome") == "stats"


@pytest.mark.parametrize(
    "settings, message",
    [
        (common_pb2.MeasurementSettings(min_runs=2), "min_runs"),
        (common_pb2.MeasurementSettings(max_time_s=-1), "max_time_s"),
        (common_pb2.MeasurementSettings(min_runs=50, max_runs=20), "below min_runs"),
    ],
)
def test_impossible_settings_are_invalid_argument(client, settings, message):
    with pytest.raises(AgentError, match=message) as exc:
        list(client.profile([ops.elementwise("Relu", (1, 8))], settings=settings))
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_empty_profile_request_is_invalid_argument(client):
    with pytest.raises(AgentError, match="no keys") as exc:
        list(client.profile([]))
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT


def _tensor(arr: np.ndarray) -> bytes:
    return numpy_helper.from_array(arr).SerializeToString()


def test_benchmark_times_the_model_and_returns_outputs_for_uploaded_inputs(client):
    model = small_cnn()
    data = model.SerializeToString()
    rng = np.random.default_rng(3)
    batches = [rng.standard_normal((n, 3, 16, 16)).astype(np.float32) for n in (2, 5)]
    resp = client.benchmark(data, batch_size=4, inputs=[{"x": _tensor(b)} for b in batches])
    assert resp.batch_size == 4 and resp.latency.n >= 10 and resp.latency.median_ms > 0
    assert resp.throughput_per_s == pytest.approx(4000 / resp.latency.median_ms)
    assert resp.session_load_ms > 0
    assert resp.model.sha256 == hashlib.sha256(data).hexdigest() and resp.model.node_count == 5
    assert list(resp.model.inputs[0].shape) == [-1, 3, 16, 16]
    assert resp.memory.peak_rss_bytes >= resp.memory.baseline_rss_bytes > 0
    assert resp.fingerprint_hash == client.info().fingerprint_hash
    local = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert len(resp.outputs) == 2
    for batch, out in zip(batches, resp.outputs, strict=True):
        got = numpy_helper.to_array(TensorProto.FromString(out.tensors[0].tensor_proto))
        assert got.shape == (len(batch), 4)
        np.testing.assert_allclose(got, local.run(None, {"x": batch})[0], rtol=1e-4, atol=1e-5)


def _raw_benchmark(address: str, parts, timeout: float = 60.0):
    with grpc.insecure_channel(address) as channel:
        return agent_pb2_grpc.DeviceAgentStub(channel).Benchmark(iter(parts), timeout=timeout)


def _upload(data: bytes, declared: int | None = None, sha: str = "", batch: int = 0):
    header = agent_pb2.BenchmarkHeader(
        model_size_bytes=len(data) if declared is None else declared, model_sha256=sha, batch_size=batch
    )
    parts = [agent_pb2.BenchmarkRequest(header=header)]
    parts += [agent_pb2.BenchmarkRequest(model_chunk=data[i : i + 4096]) for i in range(0, len(data), 4096)]
    return parts


def _with_external_data(location: str) -> bytes:
    model = small_cnn()
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    del w.float_data[:]
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value=location)
    return model.SerializeToString()


def _with_custom_domain() -> bytes:
    model = small_cnn()
    model.graph.node[1].domain = "com.example.evil"
    model.graph.node[1].op_type = "MyRelu"
    model.opset_import.add(domain="com.example.evil", version=1)
    return model.SerializeToString()


BAD_UPLOADS = {
    "garbage bytes": (
        lambda: _upload(b"\x00\xffnot a model at all" * 100),
        grpc.StatusCode.INVALID_ARGUMENT,
        "not an ONNX model",
    ),
    "truncated": (
        lambda: _upload(small_cnn().SerializeToString()[:500], declared=len(small_cnn().SerializeToString())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "upload truncated: received 500 of",
    ),
    "more than declared": (
        lambda: _upload(small_cnn().SerializeToString(), declared=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "more model bytes",
    ),
    "over the cap": (
        lambda: _upload(b"x", declared=10 * 2**40),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "over the agent's cap",
    ),
    "external data outside": (
        lambda: _upload(_with_external_data("../../etc/passwd")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outside the model",
    ),
    "external data file": (
        lambda: _upload(_with_external_data("weights.bin")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "single-file model",
    ),
    "custom-op domain": (
        lambda: _upload(_with_custom_domain()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "custom-op domain 'com.example.evil'",
    ),
    "sha mismatch": (
        lambda: _upload(small_cnn().SerializeToString(), sha="0" * 64),
        grpc.StatusCode.DATA_LOSS,
        "not the declared",
    ),
    "no header": (lambda: _upload(b"abc")[1:], grpc.StatusCode.INVALID_ARGUMENT, "first message must be a header"),
    "empty stream": (lambda: [], grpc.StatusCode.INVALID_ARGUMENT, "empty upload"),
    "zero size": (lambda: _upload(b"", declared=0), grpc.StatusCode.INVALID_ARGUMENT, "model_size_bytes is 0"),
    "fixed batch mismatch": (
        lambda: _upload(small_cnn(batch=1).SerializeToString(), batch=8),
        grpc.StatusCode.INVALID_ARGUMENT,
        "fixed batch of 1",
    ),
}


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_bad_uploads_get_precise_status_codes(agent, name):
    parts, code, message = BAD_UPLOADS[name]
    with pytest.raises(grpc.RpcError) as exc:
        _raw_benchmark(agent.address, parts())
    assert exc.value.code() == code, exc.value.details()
    assert message in exc.value.details()


def test_model_with_dynamic_non_batch_axis_is_refused(client):
    model = small_cnn()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    with pytest.raises(AgentError, match="dynamic dimension 'height' at axis 2") as exc:
        client.benchmark(model.SerializeToString())
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_uploaded_inputs_that_do_not_match_are_refused(client):
    data = small_cnn().SerializeToString()
    bad = {"x": _tensor(np.zeros((1, 3, 8, 8), np.float32))}
    with pytest.raises(AgentError, match=r"has shape \[1, 3, 8, 8\]"):
        client.benchmark(data, inputs=[bad])
    with pytest.raises(AgentError, match="no input 'y'"):
        client.benchmark(data, inputs=[{"y": _tensor(np.zeros((1, 3, 16, 16), np.float32))}])
    with pytest.raises(AgentError, match="is float64"):
        client.benchmark(data, inputs=[{"x": _tensor(np.zeros((1, 3, 16, 16)))}])


def test_agent_keeps_serving_after_bad_input(client):
    for parts, _, _ in BAD_UPLOADS.values():
        try:
            _raw_benchmark(client.target.address, parts())
        except grpc.RpcError:
            pass
    assert client.health() == "SERVING"
    (result,) = client.profile([ops.elementwise("Relu", (1, 8))])
    assert result.WhichOneof("outcome") == "stats"
    assert client.benchmark(small_cnn().SerializeToString()).latency.n >= 10


def test_several_clients_at_once_all_get_their_results(agent):
    errors, done = [], []
    model = small_cnn().SerializeToString()

    def work(i: int) -> None:
        try:
            with AgentClient(AgentTarget(agent.address), timeout_s=120) as c:
                c.info()
                if i % 2:
                    (r,) = c.profile([ops.conv(NCHW(1, 8, 8, 8), ConvSpec(8 + i, 3))])
                    assert r.WhichOneof("outcome") == "stats"
                else:
                    assert c.benchmark(model).latency.median_ms > 0
            done.append(i)
        except Exception as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors and sorted(done) == list(range(6))


def test_cancelling_a_profile_frees_the_worker(client, agent):
    # 10^6 runs per key: each key would hold the device for tens of seconds.
    slow = common_pb2.MeasurementSettings(min_runs=1_000_000, max_runs=1_000_000)
    request = agent_pb2.ProfileRequest(
        keys=[ops.conv(NCHW(1, 16, 16, 16), ConvSpec(16, 3)).to_proto()] * 5, settings=slow
    )
    with grpc.insecure_channel(agent.address) as channel:
        call = agent_pb2_grpc.DeviceAgentStub(channel).Profile(request, timeout=300)
        time.sleep(1.5)  # the first key is being measured
        call.cancel()
        with pytest.raises(grpc.RpcError) as exc:
            list(call)
        assert exc.value.code() == grpc.StatusCode.CANCELLED
    t0 = time.monotonic()
    (r,) = client.profile([ops.elementwise("Relu", (1, 8))])
    assert r.WhichOneof("outcome") == "stats"
    assert time.monotonic() - t0 < 8


def test_deadline_mid_profile_frees_the_worker(client):
    slow = common_pb2.MeasurementSettings(min_runs=1_000_000, max_runs=1_000_000)
    with pytest.raises(AgentError) as exc:
        list(client.profile([ops.conv(NCHW(1, 16, 16, 16), ConvSpec(16, 3))] * 3, settings=slow, timeout_s=1.5))
    assert exc.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    t0 = time.monotonic()
    (r,) = client.profile([ops.elementwise("Relu", (1, 8))])
    assert r.WhichOneof("outcome") == "stats" and time.monotonic() - t0 < 8


def test_deadline_mid_upload_is_reported_and_the_agent_serves_on(client, agent):
    data = small_cnn().SerializeToString()

    def slow_parts():
        parts = _upload(data)
        yield parts[0]
        yield parts[1]
        time.sleep(2.0)
        yield from parts[2:]

    with pytest.raises(grpc.RpcError) as exc:
        _raw_benchmark(agent.address, slow_parts(), timeout=0.5)
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert client.benchmark(data).latency.n >= 10


def test_client_disconnect_mid_upload(client, agent):
    data = small_cnn().SerializeToString()
    release = threading.Event()

    def stalled_parts():
        parts = _upload(data)
        yield parts[0]
        yield parts[1]
        release.wait(10)

    with grpc.insecure_channel(agent.address) as channel:
        future = agent_pb2_grpc.DeviceAgentStub(channel).Benchmark.future(stalled_parts(), timeout=30)
        time.sleep(0.5)
        future.cancel()
        release.set()
        assert future.cancelled()
    assert client.benchmark(data).latency.n >= 10
