"""OpenVINO as the agent's runtime: a real agent on 127.0.0.1:0 running real OpenVINO (installed by
setup for development): the precision probe, Profile, Benchmark, per-kernel attribution on
ResNet18 mixes, and the bad inputs the runtime brings."""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest
from onnx import TensorProto, helper, numpy_helper

from device_agent import fingerprint
from device_agent.config import AgentConfig
from device_agent.kernelprofile import profile_kernels
from device_agent.runtimes import NodeTimes
from device_agent.server import Agent
from host.agent_client import AgentClient, AgentError, AgentTarget
from host.latency.variants import export_variant, model_limits, random_policy
from lut_store.keys import ops
from lut_store.keys.graph import RuntimeNode, model_kernels
from lut_store.keys.ops import NCHW, ConvSpec
from lut_store.opkey import OpKey
from lut_store.precision import Precision
from lut_store.tomlfile import ConfigError
from protos.hadmc.v1 import agent_pb2, common_pb2
from tests.conftest import quick_config
from tests.helpers import small_cnn


@pytest.fixture(scope="module")
def ov_agent() -> Iterator[Agent]:
    running = Agent(quick_config(runtime="openvino")).start()
    yield running
    running.stop(grace_s=1.0)


@pytest.fixture()
def ov_client(ov_agent: Agent) -> Iterator[AgentClient]:
    with AgentClient(AgentTarget(ov_agent.address), timeout_s=120.0) as c:
        yield c


@pytest.fixture(scope="module")
def ov_f32_client() -> Iterator[AgentClient]:
    """OpenVINO told to compute float layers in f32: bf16 layers are then the model's own choice."""
    running = Agent(quick_config(runtime="openvino", inference_precision="f32")).start()
    with AgentClient(AgentTarget(running.address), timeout_s=120.0) as c:
        yield c
    running.stop(grace_s=1.0)


def test_the_fingerprint_names_runtime_device_and_precision(ov_client, client):
    info = ov_client.info()
    fp = info.fingerprint
    assert (fp.runtime, fp.runtime_version, fp.execution_provider) == ("openvino", ov.get_version(), "CPU")
    assert fp.onnxruntime_version == "" and "CPU" in fp.available_providers
    assert fp.provider_options["INFERENCE_NUM_THREADS"] == "1" and fp.provider_options["NUM_STREAMS"] == "1"
    # What OpenVINO itself chose for float layers on this CPU (bf16 where the CPU has it).
    core = ov.Core()
    compiled = core.compile_model(core.read_model(_relu_model().SerializeToString()), "CPU")
    expected = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    assert fp.inference_precision == expected
    assert info.fingerprint_hash == fingerprint.hash_of(fp)
    ort_fp = client.info().fingerprint
    assert (ort_fp.runtime, ort_fp.runtime_version) == ("onnxruntime", ort.__version__)
    assert client.info().fingerprint_hash != info.fingerprint_hash  # each runtime gets its own LUT
    notes = {Precision.from_proto(p.precision): p for p in info.precisions}
    assert all(p.supported for p in notes.values())
    assert "OpenVINO CPU" in notes[Precision.FP32].note and "Convolution" in notes[Precision.FP32].note
    assert f"Convolution {expected}" in notes[Precision.FP32].note
    assert "Convolution u8" in notes[Precision.INT8].note or "Convolution i8" in notes[Precision.INT8].note
    assert notes[Precision.INT8].exact_weight_bits in (7, 8)  # OpenVINO's int8 kernels, measured by the probe


def _relu_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


GRID = [
    ops.conv(NCHW(1, 16, 16, 16), ConvSpec(32, 3)),
    ops.conv(NCHW(1, 32, 8, 8), ConvSpec(32, 3, groups=32), fuse=("relu",)),
    ops.conv(NCHW(1, 16, 8, 8), ConvSpec(16, 1, padding=0), fuse=("add", "relu")),
    ops.conv(NCHW(1, 16, 8, 8), ConvSpec(16, 3), fuse=("relu",), precision=Precision.INT8),
    ops.conv(NCHW(1, 16, 8, 8), ConvSpec(16, 3), precision=Precision.FP16),
    ops.conv(NCHW(1, 16, 8, 8), ConvSpec(16, 3), precision=Precision.INT4W),
    ops.gemm(1, 64, 10),
    ops.matmul((4, 64), (64, 32)),
    ops.pool("max", NCHW(1, 16, 16, 16), 3, stride=2, padding=1),
    ops.global_avg_pool(NCHW(1, 64, 4, 4)),
    ops.elementwise("Add", (1, 16, 8, 8)),
    ops.softmax((2, 10)),
]


def test_profile_measures_a_small_grid(ov_client):
    results = list(ov_client.profile(GRID))
    assert [r.index for r in results] == list(range(len(GRID)))
    for key, r in zip(GRID, results, strict=True):
        assert r.WhichOneof("outcome") == "stats", f"{key.describe()}: {r.error.message}"
        s = r.stats
        assert r.key_hash == key.hash and s.n >= 10 and s.median_ms > 0
        assert s.min_ms <= s.median_ms <= s.p90_ms <= s.max_ms


def test_benchmark_runs_the_model_and_its_outputs_match_onnxruntime(ov_client):
    model = small_cnn()
    x = np.random.default_rng(3).standard_normal((6, 3, 16, 16)).astype(np.float32)
    batch = {"x": numpy_helper.from_array(x).SerializeToString()}
    resp = ov_client.benchmark(model.SerializeToString(), batch_size=4, inputs=[batch])
    assert resp.execution_provider == "OpenVINO CPU" and resp.batch_size == 4
    assert resp.latency.median_ms > 0 and resp.throughput_per_s > 0
    got = numpy_helper.to_array(TensorProto.FromString(resp.outputs[0].tensors[0].tensor_proto))
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.shape == want.shape == (6, 4)  # an uploaded batch of 6 runs although the model was timed at 4
    # bf16 keeps about 3 significant digits.
    np.testing.assert_allclose(got, want, atol=0.02 * float(np.abs(want).max()))


@pytest.fixture(scope="module")
def resnet18_mixes(tmp_path_factory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("mixes")
    paths = []
    for seed in (1, 2, 3):
        policy = random_policy(
            "resnet18", model_limits("resnet18"), random.Random(seed), (0.25, 0.5, 1.0), tuple(Precision)
        )
        paths.append(export_variant("resnet18", policy, tmp / f"resnet18_{seed}.onnx", seed=seed))
    return paths


def test_per_kernel_attribution_sums_to_the_measured_latency_on_resnet18_mixes(ov_client, resnet18_mixes):
    settings = common_pb2.MeasurementSettings(warmup_runs=30, max_time_s=1.0, min_window_s=0.3)
    for path in resnet18_mixes:
        host = model_kernels(onnx.load(path)).kernels
        ratios = []
        for _ in range(2):  # this shared machine's speed drifts: a miss must happen twice
            resp = ov_client.benchmark(path, batch_size=1, per_kernel=True, settings=settings)
            kp = resp.kernel_profile
            assert [OpKey.from_proto(k.key).hash for k in kp.kernels] == [k.key.hash for k in host]
            assert not kp.unattributed_nodes and kp.unattributed_ms == 0
            total = sum(k.latency.mean_ms for k in kp.kernels if k.HasField("latency"))
            assert total == pytest.approx(resp.latency.median_ms, rel=1e-6)
            convs = [k for k in kp.kernels if k.key.nodes[0].op_type == "Conv"]
            assert convs and all(k.runtime_nodes and k.latency.median_ms > 0 for k in convs)
            # The profiler's nodes, taken on the very compiled model that was measured, account for
            # the model's latency measured without reading them.
            # OpenVINO's node counters cover 76-95% of a run (README; a 2-core Xeon with AMX: 0.85-0.89
            # on these mixes, 0.74 twice in one busy CI run), the rest being the run's own overhead, never
            # more than the run (a kernel without its nodes fails above).
            ratios.append(kp.attributed_ms / resp.latency.median_ms)
            if 0.7 <= ratios[-1] <= 1.1:
                break
        assert any(0.7 <= r <= 1.1 for r in ratios), f"{path.name}: attributed / measured {ratios}"


def test_time_no_kernel_claims_is_reported_not_dropped():
    model = small_cnn(batch=1)
    mk = model_kernels(model)
    names = [k.name for k in mk.kernels]
    nodes = [RuntimeNode(n, (n,), (), ()) for n in names] + [RuntimeNode("Mystery_7", (), (), ())]
    table = np.full((20, len(nodes)), 10.0)  # 10 us per node and run
    whole = common_pb2.LatencyStats(median_ms=0.06, n=20)
    kp = profile_kernels(mk, NodeTimes(nodes, table, np.full(20, 0.06)), whole, 0.0)
    assert list(kp.unattributed_nodes) == ["Mystery_7"]
    share = 1 / len(nodes)
    assert kp.unattributed_ms == pytest.approx(0.06 * share)
    assert sum(k.latency.mean_ms for k in kp.kernels) + kp.unattributed_ms == pytest.approx(0.06)


def test_a_model_openvino_cannot_read_is_refused_and_the_agent_keeps_serving(ov_client):
    node = helper.make_node(
        "TfIdfVectorizer",
        ["x"],
        ["y"],
        mode="TF",
        min_gram_length=1,
        max_gram_length=1,
        max_skip_count=0,
        ngram_counts=[0],
        ngram_indexes=[0, 1],
        pool_int64s=[2, 3],
    )
    graph = helper.make_graph(
        [node],
        "tfidf",
        [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(AgentError, match="OpenVINO cannot read the model.*TfIdfVectorizer") as err:
        ov_client.benchmark(model.SerializeToString(), batch_size=1)
    assert "Exception from" not in str(err.value)  # OpenVINO's C++ source locations are left out
    assert ov_client.health() == "SERVING"
    assert ov_client.benchmark(small_cnn().SerializeToString(), batch_size=1).latency.median_ms > 0


def test_openvino_without_the_extra_installed_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'hadmc\[openvino\]'"):
        AgentConfig(runtime="openvino")


def test_a_precision_hint_the_device_cannot_run_is_refused_at_start():
    capabilities = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    missing = [hint for hint, cap in (("bf16", "BF16"), ("f16", "FP16")) if cap not in capabilities]
    if not missing:
        pytest.skip("this CPU runs every precision hint")
    with pytest.raises(ConfigError, match=f"inference_precision = '{missing[0]}'.*does not run it"):
        Agent(quick_config(runtime="openvino", inference_precision=missing[0])).start()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"runtime": "tensorflow"}, "runtime = 'tensorflow'; allowed: 'onnxruntime', 'openvino'"),
        ({"inference_precision": "int3"}, "inference_precision = 'int3'; allowed"),
        ({"inference_precision": "bf16"}, "is an OpenVINO setting"),
    ],
)
def test_runtime_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        AgentConfig(**overrides)


def _bf16_capable() -> bool:
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_bf16_is_a_precision_where_the_runtime_runs_it(ov_f32_client, client):
    notes = {Precision.from_proto(p.precision): p for p in ov_f32_client.info().precisions}
    assert ov_f32_client.info().fingerprint.inference_precision == "f32"
    assert notes[Precision.FP32].supported and "Convolution f32" in notes[Precision.FP32].note
    assert notes[Precision.BF16].supported
    if _bf16_capable():  # a bf16 layer runs as a bf16 kernel although the rest runs in f32
        assert "Convolution bf16" in notes[Precision.BF16].note
    ort_bf16 = next(p for p in client.info().precisions if p.precision == common_pb2.PRECISION_BF16)
    assert not ort_bf16.supported and "CPUExecutionProvider" in ort_bf16.note  # no bf16 Conv in onnxruntime
    key = ops.conv(NCHW(1, 16, 8, 8), ConvSpec(16, 3), fuse=("relu",), precision=Precision.BF16)
    [on_ov] = ov_f32_client.profile([key])
    assert on_ov.WhichOneof("outcome") == "stats" and on_ov.stats.median_ms > 0
    [on_ort] = client.profile([key])
    assert on_ort.error.code == agent_pb2.KeyError.CODE_UNSUPPORTED


def test_a_bf16_layer_is_exported_keyed_measured_and_agrees_with_torch(ov_f32_client, tmp_path):
    import torch

    from host.compress.export import export_policy_model
    from host.compress.policy import LayerAction, Policy
    from host.latency.variants import variant_model

    limits = model_limits("resnet18")
    layers = {lim.name: LayerAction(1.0, Precision.FP32) for lim in limits}
    for name in ("layer1.0.conv1", "layer2.0.conv2", "layer3.1.conv1"):
        layers[name] = LayerAction(1.0, Precision.BF16)
    layers["layer4.0.conv1"] = LayerAction(0.5, Precision.INT8)
    policy = Policy("resnet18", layers)
    net = variant_model("resnet18", policy, 6, (3, 64, 64))
    path = export_policy_model(net, policy, tmp_path / "bf16.onnx", (3, 64, 64)).path
    model = onnx.load(path)
    assert model.opset_import[0].version >= 22
    kernels = {k.name: k.key for k in model_kernels(model).kernels}
    assert kernels["/layer1/layer1.0/conv1/Conv"].precision == "bf16"
    assert sum(k.precision == "bf16" for k in kernels.values()) == 3
    x = np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32)
    resp = ov_f32_client.benchmark(
        path, batch_size=1, per_kernel=True, inputs=[{"input": numpy_helper.from_array(x).SerializeToString()}]
    )
    agent_keys = [OpKey.from_proto(k.key) for k in resp.kernel_profile.kernels]
    assert [k.hash for k in agent_keys] == [k.hash for k in kernels.values()]
    assert not resp.kernel_profile.unattributed_nodes
    on_device = numpy_helper.to_array(TensorProto.FromString(resp.outputs[0].tensors[0].tensor_proto))
    with torch.no_grad():
        in_torch = net(torch.from_numpy(x)).numpy()
    # torch rounds the bf16 layers' weights and inputs as the device's bf16 kernels do.
    np.testing.assert_allclose(on_device, in_torch, atol=0.05 * float(np.abs(in_torch).max()))


def test_openvino_default_is_the_fp32_model_on_openvino_beside_the_search(agent, ov_agent, tmp_path, monkeypatch):
    from host.search.run import load_search_config, run_search

    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    doc = {
        "model": "mlp",
        "data": {"name": "breast-cancer"},
        "search": {
            "controllers": ["uniform"],
            "episodes": 1,
            "episode_samples": 64,
            "alternatives": ["openvino-default"],
            "openvino_device": ov_agent.address,
        },
        "baseline": {"epochs": 2},
        "final_distill": {"epochs": 1},
        "device": {"name": agent.address},
        "store": f"sqlite:///{tmp_path / 'lut.sqlite'}",
    }
    out = tmp_path / "run"
    summary = run_search(load_search_config(None, doc), out, progress=False)
    assert list(summary.alternatives) == ["openvino-default"]
    a = summary.alternatives["openvino-default"]
    reference = out / "final" / "baseline_fp32.onnx"
    assert a.onnx == "final/baseline_fp32.onnx" and a.file_bytes == reference.stat().st_size  # the model unchanged
    assert a.keep_ratio == 1.0 and a.params == summary.baseline.params
    precision = AgentClient(AgentTarget(ov_agent.address)).info().fingerprint.inference_precision
    assert f"float layers computed in {precision}" in a.description
    assert a.predicted_latency_ms is None and "OpenVINO agent" in a.prediction_error  # no LUT of that device here
    assert len(a.benchmark_rounds) == 3
    assert a.speedup == pytest.approx(a.baseline_measured_latency.median_ms / a.measured_latency.median_ms)
    # The same network on another runtime: the teacher's classes but for bf16 rounding.
    assert a.agreement.teacher_agreement >= 0.95
    assert abs(a.test_accuracy_onnxruntime - summary.baseline.test_accuracy_onnxruntime) <= 0.03
    assert "openvino-default" in (out / "report.html").read_text()


class _Elsewhere:
    """The search device's client, claiming another CPU (a unit test of the same-machine check)."""

    def __init__(self, client: AgentClient) -> None:
        self.client = client

    def info(self) -> agent_pb2.DeviceInfo:
        info = agent_pb2.DeviceInfo()
        info.CopyFrom(self.client.info())
        info.fingerprint.cpu.model = "Some Other CPU"
        return info


def test_openvino_default_refuses_what_cannot_give_it(agent, ov_agent, client):
    from types import SimpleNamespace

    from host.device import DeviceConfig
    from host.search.alternatives import check_openvino_default
    from host.search.run import load_search_config

    named = {"device": {"name": agent.address}, "search": {"alternatives": ["openvino-default"]}}
    with pytest.raises(ConfigError, match=r"name an OpenVINO agent on that machine in \[search\] openvino_device"):
        load_search_config(None, named)
    with pytest.raises(ConfigError, match="add it to alternatives"):
        load_search_config(None, {"search": {"openvino_device": ov_agent.address}})

    def bench(device: object, threads: int = 1) -> SimpleNamespace:
        return SimpleNamespace(config=SimpleNamespace(device=DeviceConfig(threads=threads)), device=device)

    check_openvino_default(bench(client), ov_agent.address)  # the same machine: accepted
    check_openvino_default(bench(client), "")  # an embedded OpenVINO agent beside an embedded search device
    with pytest.raises(ConfigError, match="needs an OpenVINO agent; .* runs onnxruntime"):
        check_openvino_default(bench(client), agent.address)
    with pytest.raises(ConfigError, match="not on the search device's .*cpu.model: 'Some Other CPU'"):
        check_openvino_default(bench(_Elsewhere(client)), ov_agent.address)
    f32 = Agent(quick_config(runtime="openvino", inference_precision="f32")).start()
    try:
        with pytest.raises(ConfigError, match="inference_precision = 'f32': start it with the default"):
            check_openvino_default(bench(client), f32.address)
    finally:
        f32.stop(grace_s=1.0)
