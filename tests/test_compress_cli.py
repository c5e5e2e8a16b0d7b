"""`hadmc compress` and `hadmc policy init` as users run them: bad input fails fast and clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import exact_int8_weight_bits

ROOT = Path(__file__).resolve().parent.parent


def hadmc(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HADMC_HOME": str(tmp_path / "home")}
    return subprocess.run(
        [sys.executable, "-m", "host.cli", *args], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
    )


def test_policy_init_writes_a_valid_uniform_policy(tmp_path):
    out = tmp_path / "p.json"
    result = hadmc(
        "policy",
        "init",
        "--model",
        "resnet18",
        "--keep",
        "0.5",
        "--precision",
        "int8",
        "--edge-precision",
        "fp32",
        "-o",
        str(out),
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    layers = json.loads(out.read_text())["layers"]
    assert len(layers) == 21 and layers["layer2.0.conv1"] == {
        "precision": "int8",
        "granularity": "per-channel",
        "keep_ratio": 0.5,
    }
    assert layers["conv1"]["precision"] == "fp32" and layers["fc"] == {
        "precision": "fp32",
        "granularity": "per-channel",
        "keep_ratio": 1.0,
    }


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda doc: {**doc, "model": "mobilenetv2"}, "the policy is for model 'mobilenetv2', not 'resnet18'"),
        (
            lambda doc: {**doc, "layers": {**doc["layers"], "layer9.conv": {"keep_ratio": 1.0, "precision": "int8"}}},
            "unknown layers ['layer9.conv']",
        ),
        (lambda doc: {"model": "resnet18"}, "not a policy document"),
        (
            lambda doc: {**doc, "layers": {**doc["layers"], "conv1": {"keep_ratio": "0.5", "precision": "int8"}}},
            "layer conv1: keep_ratio = '0.5' must be a number",
        ),
        (
            lambda doc: {**doc, "layers": {**doc["layers"], "conv1": {"keep_ratio": 0.5, "bits": 8}}},
            'layer conv1: "bits": 8 is the old form; write "precision": "int8" instead',
        ),
        (
            lambda doc: {**doc, "layers": {**doc["layers"], "conv1": {"keep_ratio": 0.5, "precision": "int3"}}},
            "layer conv1: unknown precision 'int3'; allowed: fp32, fp16, bf16, int8, int4",
        ),
    ],
)
def test_bad_policies_fail_before_any_training(tmp_path, edit, message):
    policy = tmp_path / "p.json"
    assert hadmc("policy", "init", "-o", str(policy), tmp_path=tmp_path).returncode == 0
    policy.write_text(json.dumps(edit(json.loads(policy.read_text()))))
    result = hadmc("compress", "--policy", str(policy), "--out", str(tmp_path / "out"), tmp_path=tmp_path)
    assert result.returncode == 1 and message in result.stderr
    assert not (tmp_path / "home" / "baselines").exists()


def test_unknown_config_key_and_unknown_data_set(tmp_path):
    policy = tmp_path / "p.json"
    hadmc("policy", "init", "-o", str(policy), tmp_path=tmp_path)
    config = tmp_path / "c.toml"
    config.write_text('modle = "resnet18"\n')
    result = hadmc(
        "compress", "--config", str(config), "--policy", str(policy), "--out", str(tmp_path / "o"), tmp_path=tmp_path
    )
    assert result.returncode == 1 and "unknown config key 'modle'; did you mean 'model'?" in result.stderr
    config.write_text('[data]\nname = "imagenet"\n')
    result = hadmc(
        "compress", "--config", str(config), "--policy", str(policy), "--out", str(tmp_path / "o"), tmp_path=tmp_path
    )
    assert result.returncode == 1 and "imagenet" in result.stderr and "synthetic-neu-det" in result.stderr


def test_int8_weight_bits_is_the_devices_or_7_or_8():
    from host.compress.run import load_compress_config
    from lut_store.tomlfile import ConfigError

    assert load_compress_config(None, {"compress": {"int8_weight_bits": 7}}).compress.int8_weight_bits == 7
    with pytest.raises(ConfigError, match=r"int8_weight_bits = 6: 0 \(what the device computes exactly\), 7 or 8"):
        load_compress_config(None, {"compress": {"int8_weight_bits": 6}})


def test_compress_end_to_end_on_real_digits_with_onnxruntime_parity(tmp_path, agent, monkeypatch):
    """MLP on scikit-learn's digits: prune half, int8, distill; accuracy in onnxruntime on the device
    matches torch within 0.5 points; the speedup is measured against the FP32 export."""
    from host.agent_client import AgentClient, AgentTarget
    from host.compress.distill import DistillConfig
    from host.compress.policy import LayerAction, Policy
    from host.compress.run import CompressConfig, run_compress
    from host.compress.train import TrainConfig
    from host.data import DataConfig
    from lut_store.precision import Precision

    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    config = CompressConfig(
        model="mlp",
        data=DataConfig(name="digits"),
        baseline=TrainConfig(epochs=15, lr=3e-3),
        distill=DistillConfig(epochs=10, lr=1e-3),
    )
    int8 = Precision.INT8
    policy = Policy(
        "mlp", {"body.0": LayerAction(0.5, int8), "body.2": LayerAction(0.5, int8), "head": LayerAction(1.0, int8)}
    )
    with AgentClient(AgentTarget(agent.address)) as client:
        summary = run_compress(config, policy, tmp_path / "out", progress=False, device=client)
    base, c = summary.baseline, summary.compressed
    assert base.test_accuracy > 0.9
    # int8 parity within half a point: 7-bit weights where the device's int8 kernels saturate.
    assert abs(c.test_accuracy_onnxruntime - c.test_accuracy) <= 0.005
    import onnx

    graph = onnx.load(tmp_path / "out" / "compressed.onnx").graph
    levels = [onnx.numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith("_weight_q")]
    top = 2 ** (exact_int8_weight_bits() - 1)
    assert len(levels) == 3 and all(-top <= v.min() and v.max() < top for v in levels)
    assert abs(base.test_accuracy_onnxruntime - base.test_accuracy) <= 0.005
    assert c.test_accuracy > base.test_accuracy - 0.05
    assert 0.6 < c.params_reduction < 0.8  # the 64-wide input and the head stay
    assert c.speedup == pytest.approx(c.baseline_measured_latency.median_ms / c.measured_latency.median_ms)
    assert c.measured_latency.n >= 10 and c.baseline_measured_latency.n >= 10
    assert c.predicted_latency_ms > 0 and base.predicted_latency_ms > 0
    assert summary.distill_loss[-1] < summary.distill_loss[0]
    from host.runs import CompressSummary, read_record

    assert read_record(tmp_path / "out" / "summary.json", CompressSummary) == summary
    assert (tmp_path / "out" / "compressed.onnx").exists()


def _policy(tmp_path: Path, model: str = "mlp", shape: str = "1,8,8", classes: int = 10, keep: float = 0.5) -> Path:
    path = tmp_path / "p.json"
    result = hadmc(
        "policy",
        "init",
        "--model",
        model,
        "--input-shape",
        shape,
        "--classes",
        str(classes),
        "--keep",
        str(keep),
        "-o",
        str(path),
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return path


def test_bad_data_fails_with_a_clear_message(tmp_path):
    (tmp_path / "empty").mkdir()
    table = tmp_path / "t.csv"
    table.write_text("a,b,label\n1,2,0\n3,4,1\n")
    cases = [
        (f'model = "resnet18"\n[data]\nname = "neu-det-folder"\npath = "{tmp_path / "empty"}"\n', "no images"),
        (f'model = "mlp"\n[data]\nname = "csv"\npath = "{table}"\nlabel_column = "class"\n', "no column 'class'"),
    ]
    policy = _policy(tmp_path)
    for text, message in cases:
        config = tmp_path / "c.toml"
        config.write_text(text)
        result = hadmc(
            "compress",
            "--config",
            str(config),
            "--policy",
            str(policy),
            "--out",
            str(tmp_path / "o"),
            tmp_path=tmp_path,
        )
        assert result.returncode == 1 and message in result.stderr, result.stderr


def test_corrupt_cached_baseline_is_named(tmp_path):
    from dataclasses import replace

    from host.compress.run import CompressConfig
    from host.compress.train import baseline_path
    from host.data import DataConfig

    config_file = tmp_path / "c.toml"
    config_file.write_text('model = "mlp"\n[data]\nname = "digits"\n')
    config = replace(CompressConfig(), model="mlp", data=DataConfig(name="digits"))
    cache = tmp_path / "home"
    from host.data import load_dataset

    path = baseline_path("mlp", f"{load_dataset('digits').cache_id}-s0", config.baseline, config.data.batch_size)
    target = cache / "baselines" / path.name
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\x80\x04garbage")
    result = hadmc(
        "compress",
        "--config",
        str(config_file),
        "--policy",
        str(_policy(tmp_path)),
        "--out",
        str(tmp_path / "o"),
        tmp_path=tmp_path,
    )
    assert result.returncode == 1 and f"checkpoint {target} cannot be loaded" in result.stderr, result.stderr


@pytest.mark.timeout(600)
def test_mobilenetv2_int8_onnxruntime_parity_on_synthetic_neu_det(tmp_path, agent, monkeypatch):
    """A trained int8 MobileNetV2 (5 epochs, 79% test accuracy, 65-85 s on 2 cores): torch's test
    accuracy is the device's, image for image. (The gap was 0.0-0.56 points while a projection's
    output was quantized twice in torch and once, merged, in onnxruntime; up to float
    accumulation's missed levels after that.)"""
    from host.agent_client import AgentClient, AgentTarget
    from host.compress.distill import DistillConfig
    from host.compress.run import CompressConfig, run_compress
    from host.compress.train import TrainConfig
    from host.data import DataConfig

    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    config = CompressConfig(
        model="mobilenetv2",
        data=DataConfig(name="synthetic-neu-det"),
        baseline=TrainConfig(epochs=5, lr=3e-3, weight_decay=5e-4, augment=True),
        distill=DistillConfig(epochs=1, augment=True),
    )
    from host.compress.policy import Policy

    policy = Policy.load(_policy(tmp_path, model="mobilenetv2", shape="3,64,64", classes=6, keep=0.75))
    with AgentClient(AgentTarget(agent.address)) as client:
        summary = run_compress(config, policy, tmp_path / "out", progress=False, device=client)
    base, c = summary.baseline, summary.compressed
    assert base.test_accuracy > 0.7
    assert c.test_accuracy_onnxruntime == c.test_accuracy  # torch computes the runtime's int8 arithmetic
