"""`hadmc compress`: one given policy, end to end.

baseline (cached) -> prune -> re-estimate and fold BN -> fake-quant -> distill -> export ONNX -> accuracy in
onnxruntime on the device -> benchmark on the device against the FP32 baseline exported and
measured the same way -> summary.json.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from onnx import TensorProto, numpy_helper

from host.compress.distill import DistillConfig, distill, distill_dataset, distill_loader
from host.compress.export import export_onnx, export_policy_model
from host.compress.fold import fold_batchnorm, recalibrate_batchnorm
from host.compress.policy import Policy, validate
from host.compress.prune import count_params, layer_limits, prune
from host.compress.quant import apply_fake_quant, calibrate
from host.compress.size import size_report
from host.compress.train import TrainConfig, accuracy, trained_baseline
from host.jsonfile import write_json
from host.progress import Progress
from lut_store.tomlfile import ConfigError, from_mapping, read_toml


def compressed(
    teacher: torch.nn.Module,
    policy: Policy,
    example: torch.Tensor,
    round_to: int,
    loader: torch.utils.data.DataLoader,
    calibration_batches: int,
) -> tuple[torch.nn.Module, int]:
    """The teacher pruned per `policy`, its BN re-estimated on `loader` and folded, fake-quantized
    and calibrated (not yet fine-tuned); with the teacher's parameter count."""
    student = copy.deepcopy(teacher)
    for p in student.parameters():  # distillation freezes the teacher; Torch-Pruning skips frozen layers
        p.requires_grad_(True)
    before = count_params(student)
    prune(student, policy, example, round_to)
    recalibrate_batchnorm(student, loader)
    fold_batchnorm(student)
    apply_fake_quant(student, policy)
    calibrate(student, calibration_batches, loader)
    return student, before


@dataclass(frozen=True)
class DataConfig:
    name: str = "synthetic-neu-det"
    path: str = ""
    label_column: str = ""
    seed: int = 0


@dataclass(frozen=True)
class CompressConfig:
    """`[model]`-less flat layout: top-level keys plus [data], [baseline], [distill] tables."""

    model: str = "resnet18"
    data: DataConfig = DataConfig()
    baseline: TrainConfig = TrainConfig()
    distill: DistillConfig = DistillConfig()
    batch_size: int = 32
    calibration_batches: int = 4
    round_to: int = 8
    # Agent address (HOST:PORT); empty starts an embedded agent with `threads` intra-op threads.
    device: str = ""
    threads: int = 1
    benchmark_batch: int = 1
    benchmark_rounds: int = 3  # interleaved benchmarks of the compressed and the FP32 model for the speedup
    opset: int = 17


def load_compress_config(path: Path | None) -> CompressConfig:
    if path is None:
        return CompressConfig()
    return from_mapping(CompressConfig, read_toml(path, "config", ConfigError))


@dataclass
class Summary:
    model: str
    data: str
    policy: dict[str, Any]
    baseline_cached: bool
    accuracy: dict[str, float] = field(default_factory=dict)
    size: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    distill_loss: list[float] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _batches(x: np.ndarray, size: int) -> Iterator[dict[str, bytes]]:
    for start in range(0, len(x), size):
        yield {"input": numpy_helper.from_array(np.ascontiguousarray(x[start : start + size])).SerializeToString()}


def device_accuracy_and_latency(
    client: Any, model_path: Path, x: np.ndarray, y: np.ndarray, batch: int
) -> tuple[float, dict[str, Any]]:
    """Benchmark on the device and score its own outputs for the test inputs."""
    from host.agent_client import message_dict

    resp = client.benchmark(model_path, batch_size=batch, inputs=list(_batches(x, 64)))
    logits = np.concatenate(
        [numpy_helper.to_array(TensorProto.FromString(out.tensors[0].tensor_proto)) for out in resp.outputs]
    )
    return float((logits.argmax(axis=1) == y).mean()), message_dict(resp, drop=("outputs",))


@dataclass(frozen=True)
class PairedLatency:
    """A model's speedup over a baseline from interleaved benchmarks on one device."""

    speedup: float  # median of the baseline's medians / median of the model's medians
    model: dict[str, Any]  # the benchmark (latency stats, memory, ...) of the model's median round
    baseline: dict[str, Any]  # the same for the baseline
    rounds: list[dict[str, float]]  # {"model_ms", "baseline_ms"} per round, in order


def paired_latency(
    client: Any, model_path: Path, baseline_path: Path, rounds: int = 3, batch: int = 1
) -> PairedLatency:
    """Benchmark the model and the baseline in turn, `rounds` times each. A CPU shared with other
    tenants drifts by tens of percent within minutes, unseen by the agent's interference check
    (measured here: the FP32 ResNet18 at one thread took 4.0 to 6.8 ms in one search), so a
    speedup is a ratio of measurements taken side by side, with every round kept."""
    from host.agent_client import message_dict

    if rounds < 1:
        raise ValueError(f"rounds = {rounds}: a speedup needs at least one measurement of each model")
    model_docs, baseline_docs = [], []
    for _ in range(rounds):
        model_docs.append(message_dict(client.benchmark(model_path, batch_size=batch)))
        baseline_docs.append(message_dict(client.benchmark(baseline_path, batch_size=batch)))

    def middle(docs: list[dict[str, Any]]) -> dict[str, Any]:
        return sorted(docs, key=lambda d: d["latency"]["median_ms"])[(len(docs) - 1) // 2]

    model, baseline = middle(model_docs), middle(baseline_docs)
    return PairedLatency(
        baseline["latency"]["median_ms"] / model["latency"]["median_ms"],
        model,
        baseline,
        [
            {"model_ms": m["latency"]["median_ms"], "baseline_ms": b["latency"]["median_ms"]}
            for m, b in zip(model_docs, baseline_docs, strict=True)
        ],
    )


@contextmanager
def device_client(address: str, threads: int) -> Iterator[Any]:
    """A client of the agent at `address`, or of an embedded one with `threads` intra-op threads
    when `address` is empty (calls time out after 60 s, with bounded retries)."""
    from device_agent.config import AgentConfig
    from host.agent_client import AgentClient, AgentTarget
    from host.embedded import embedded_agent

    context = (
        nullcontext(AgentTarget(address))
        if address
        else embedded_agent(AgentConfig(listen="127.0.0.1:0", intra_op_threads=threads))
    )
    with context as target, AgentClient(target, timeout_s=60, retries=3) as client:
        yield client


def run_compress(
    config: CompressConfig, policy: Policy, out: Path, progress: bool = True, client: Any = None
) -> Summary:
    """The whole pipeline for one policy; writes ONNX files and summary.json into `out`."""
    from host.data import load_dataset, make_loaders
    from host.models import build_model

    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t0 = time.monotonic()
    options = {k: v for k, v in asdict(config.data).items() if k != "name" and v != ""}
    data = load_dataset(config.data.name, **options)
    loaders = make_loaders(data, batch_size=config.batch_size, seed=config.data.seed)
    num_classes, shape = len(data.classes), tuple(data.input_shape)
    build: Callable[[], torch.nn.Module] = lambda: build_model(config.model, num_classes, shape)  # noqa: E731
    data_id = f"{data.cache_id}-s{config.data.seed}"
    example = torch.zeros((1, *shape))
    validate(policy, config.model, layer_limits(build(), example))  # before any training
    shown = Progress(progress)
    shown.say(f"baseline {config.model} on {data.name} ...")
    teacher, cached = trained_baseline(
        build, config.model, data_id, loaders.train, config.baseline, shown.fit("baseline")
    )
    times["baseline_s"] = time.monotonic() - t0

    student, params_before = compressed(
        teacher, policy, example, config.round_to, loaders.train, config.calibration_batches
    )
    shown.say(f"distilling the compressed student ({config.distill.epochs} epochs) ...")
    t1 = time.monotonic()
    loader = distill_loader(
        distill_dataset(teacher, config.model, loaders.train.dataset, config.distill),
        config.batch_size,
        config.data.seed,
    )
    report = distill(student, teacher, config.model, loader, config.distill, shown.fit("distill"))
    times["distill_s"] = time.monotonic() - t1

    baseline_onnx, compressed_onnx = out / "baseline_fp32.onnx", out / "compressed.onnx"
    export_onnx(teacher, baseline_onnx, shape, config.opset)
    layers_per_precision = export_policy_model(student, policy, compressed_onnx, shape, config.opset)
    summary = Summary(config.model, data.name, json.loads(policy.to_json()), cached)
    summary.accuracy = {
        "baseline_val_torch": accuracy(teacher, loaders.val),
        "baseline_test_torch": accuracy(teacher, loaders.test),
        "compressed_val_torch": accuracy(student, loaders.val),
        "compressed_test_torch": accuracy(student, loaders.test),
    }
    sizes = size_report(student, policy, params_before)
    summary.size = {**asdict(sizes), "params_reduction": sizes.params_reduction, "compression": sizes.compression}
    shown.say("verifying accuracy and measuring latency on the device ...")
    with nullcontext(client) if client is not None else device_client(config.device, config.threads) as device:
        acc_b, _ = device_accuracy_and_latency(device, baseline_onnx, data.x_test, data.y_test, config.benchmark_batch)
        acc_c, _ = device_accuracy_and_latency(
            device, compressed_onnx, data.x_test, data.y_test, config.benchmark_batch
        )
        paired = paired_latency(device, compressed_onnx, baseline_onnx, config.benchmark_rounds, config.benchmark_batch)
    summary.accuracy.update(baseline_test_onnxruntime=acc_b, compressed_test_onnxruntime=acc_c)
    summary.latency = {
        "baseline": paired.baseline,
        "compressed": paired.model,
        "speedup": paired.speedup,
        "rounds": paired.rounds,
        "batch_size": config.benchmark_batch,
    }
    summary.distill_loss = report.epoch_loss
    summary.files = {"baseline_onnx": str(baseline_onnx), "compressed_onnx": str(compressed_onnx)}
    summary.size["layers_per_precision"] = {str(p): n for p, n in layers_per_precision.items()}
    times["total_s"] = time.monotonic() - t0
    summary.seconds = times
    write_json(out / "policy.json", json.loads(policy.to_json()))
    write_json(out / "config.json", asdict(config))
    write_json(out / "summary.json", asdict(summary))  # last: a compression with summary.json is finished
    return summary
