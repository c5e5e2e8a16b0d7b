"""The workbench: one model, data set, teacher, device and LUT, and the stages every driver
composes. `hadmc search`, `hadmc compress`, the experiment studies, the sequential baseline and
the benches are short drivers over it.

    with Workbench.open(config) as bench:
        student, before = bench.compress(policy, bench.loaders.train)     # prune, fold, quantize
        exported = bench.export(student, policy, path)                    # ONNX + layer -> node map
        prediction = bench.predict(exported)                              # LUT latency (profiles misses)
        accuracy = bench.accuracy(student, "val")

The teacher is trained (or read from the baseline cache) the first time a stage needs it.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import structlog
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from host.agreement import agreement
from host.compress.apply import Calibration, student_of
from host.compress.distill import (
    DistillConfig,
    DistillReport,
    distill,
    distill_dataset,
    distill_loader,
    feature_taps,
)
from host.compress.export import ExportedModel, export_onnx, export_policy_model
from host.compress.fold import fold_batchnorm
from host.compress.policy import LayerLimits, Policy, validate
from host.compress.prune import layer_limits
from host.compress.quant import runtime_arithmetic
from host.compress.size import SizeReport, size_report, storage_compression_ratio
from host.compress.train import TrainConfig, accuracy, load_weights, trained_baseline
from host.data import DataConfig, DataSplits, make_loaders, tensor_dataset
from host.device import (
    Device,
    DeviceConfig,
    PairedLatency,
    device_classes,
    open_device,
    paired_latencies,
)
from host.latency.predict import LatencyPredictor, Prediction
from host.latency.variants import variant_model
from host.models import ModelError, build_model, model_id
from host.progress import FitProgress, Progress
from host.runs import Agreement, Baseline, FinalModel, Latency
from lut_store.interface import LutStore
from lut_store.precision import Precision, device_precisions, int8_exact_weight_bits
from lut_store.records import Version
from lut_store.store import open_store
from lut_store.tomlfile import ConfigError

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CompressSettings:
    """`[compress]`: how a policy is applied and exported."""

    round_to: int = 8  # kept channels are a multiple of this
    calibration_batches: int = 2  # training batches that set int8 activation ranges
    opset: int = 17
    # Bits of int8 layers' weights: 0 takes the device's (8, or 7 where its probe finds that its
    # int8 kernels saturate); 7 or 8 forces it.
    int8_weight_bits: int = 0

    def __post_init__(self) -> None:
        if self.round_to < 1 or self.calibration_batches < 1:
            raise ValueError(
                f"round_to = {self.round_to} and calibration_batches = {self.calibration_batches} must be at least 1"
            )
        if self.int8_weight_bits not in (0, 7, 8):
            raise ValueError(
                f"int8_weight_bits = {self.int8_weight_bits}: 0 (what the device computes exactly), 7 or 8"
            )


@dataclass(frozen=True)
class LutSettings:
    """`[lut]`: which LUT version predictions start from, and whether misses may be profiled."""

    version: int | None = None  # pin this version id; None: the newest sealed one of the device
    offline: bool = False  # no on-demand profiling: a kernel the LUT lacks is an error naming it
    # A search whose FP32 model the LUT predicts this far (relative) from its measurement at the
    # start profiles every kernel afresh: the device has changed since the LUT was measured. 0: never.
    max_drift: float = 0.10
    # A grpc:// store served by `hadmc lut serve`: the file holding its token, its TLS CA (PEM).
    token_file: str = ""
    tls_ca: str = ""

    def open_store(self, url: str) -> LutStore:
        """The store at `url` (empty: the default SQLite file), with this table's credentials."""
        try:
            token = Path(self.token_file).read_text().strip() if self.token_file else None
            ca = Path(self.tls_ca).read_bytes() if self.tls_ca else None
        except OSError as exc:
            raise ConfigError(f"[lut] cannot read {exc.filename}: {exc.strerror}") from None
        return open_store(url or None, token=token, tls_ca=ca)

    def __post_init__(self) -> None:
        if self.version is not None and self.version < 1:
            raise ValueError(f"version = {self.version}: LUT version ids start at 1")
        if not 0 <= self.max_drift < 10:
            raise ValueError(f"max_drift = {self.max_drift}: a fraction (0.1: 10%), or 0 to never re-profile")


@dataclass(frozen=True)
class BenchConfig:
    """What a workbench is built from: the model, its data and teacher, the device and the LUT store."""

    # A built-in name, or your own: "package.module:factory" / "path/to/file.py:factory" (host/models).
    model: str = "resnet18"
    factory_kwargs: dict[str, Any] = field(default_factory=dict)  # the factory's keyword arguments
    weights: str = ""  # a trained teacher's state_dict (torch.save): loaded and evaluated, not retrained
    input_shape: list[int] = field(default_factory=list)  # checked against the data's when given
    kd_layers: list[str] = field(default_factory=list)  # distillation taps; default: found (feature_taps)
    store: str = ""  # LUT store URL; empty: the SQLite file under $HADMC_HOME
    data: DataConfig = DataConfig()
    baseline: TrainConfig = TrainConfig()
    device: DeviceConfig = DeviceConfig()
    lut: LutSettings = LutSettings()
    compress: CompressSettings = CompressSettings()


class Workbench:
    """The stages over one model, data set, device and LUT (see the module docstring)."""

    def __init__(
        self, config: BenchConfig, device: Device, predictor: LatencyPredictor, data: DataSplits, progress: Progress
    ) -> None:
        self.config = config
        self.device = device
        self.predictor = predictor
        self.data = data
        self.progress = progress
        self.loaders = make_loaders(data, batch_size=config.data.batch_size, seed=config.data.seed)
        self.input_shape = tuple(data.input_shape)
        if config.input_shape and tuple(config.input_shape) != self.input_shape:
            raise ConfigError(
                f"input_shape = {list(config.input_shape)}, but the data {data.name} gives inputs of shape "
                f"{list(self.input_shape)}"
            )
        self._kd_layers: tuple[str, ...] | None = None
        self._teacher: nn.Module | None = None
        self.teacher_cached: bool | None = None  # whether the teacher came from the baseline cache
        self._limits: list[LayerLimits] | None = None
        self._int8_weight_bits: int | None = None
        self._distill_sets: dict[bool, TensorDataset] = {}  # by DistillConfig.augment
        self.sealed: Version | None = None  # the LUT version sealed when the workbench closed
        self._teacher_logits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # split -> (logits, labels)
        self._reference_classes: dict[Path, np.ndarray] = {}  # an FP32 reference's test-split classes

    @classmethod
    @contextmanager
    def open(
        cls, config: BenchConfig, progress: Progress | None = None, device: Device | None = None
    ) -> Iterator[Workbench]:
        """Connect to the device (or start an embedded agent), open the store and the device's
        LUT (`[lut]`: pinned or the newest sealed version; offline: no profiling), load the data.
        Leaving the block normally seals the LUT version of the kernels profiled on demand
        (`sealed`); after an error it stays open with its lease released, to be resumed by the
        next search of this device."""
        with (
            nullcontext(device) if device is not None else open_device(config.device) as agent,
            config.lut.open_store(config.store) as store,
        ):
            # The device and the LUT answer before any training.
            predictor = LatencyPredictor.for_device(store, agent, pinned=config.lut.version, offline=config.lut.offline)
            bench = cls(config, agent, predictor, config.data.load(), progress or Progress(False))
            try:
                yield bench
            except BaseException:
                predictor.release()
                raise
            bench.sealed = predictor.close()

    # --- the model and its teacher ---------------------------------------------------------

    @property
    def example(self) -> torch.Tensor:
        return torch.zeros((1, *self.input_shape))

    def fresh_model(self, seed: int = 0) -> nn.Module:
        """An untrained model of the workbench's architecture (weights from `seed`)."""
        torch.manual_seed(seed)
        return self._build()

    def _build(self) -> nn.Module:
        return build_model(self.config.model, self.data.num_classes, self.input_shape, self.config.factory_kwargs)

    @property
    def teacher(self) -> nn.Module:
        """The FP32 teacher (in eval mode): the given `weights`, else the baseline from the cache
        or trained now."""
        if self._teacher is None:
            config = self.config
            if config.weights:
                self.progress.say(f"teacher {config.model} from {config.weights} ...")
                self._teacher, self.teacher_cached = load_weights(self._build(), Path(config.weights)), False
            else:
                self.progress.say(f"baseline {config.model} on {self.data.name} ...")
                self._teacher, self.teacher_cached = trained_baseline(
                    self._build,
                    model_id(config.model, config.factory_kwargs),
                    f"{self.data.cache_id}-s{config.data.seed}",
                    self.loaders.train,
                    config.baseline,
                    self.progress.fit("baseline"),
                )
            self._teacher.eval()
        return self._teacher

    @property
    def kd_layers(self) -> tuple[str, ...]:
        """The modules whose outputs distillation aligns: `kd_layers`, else the stage ends found."""
        if self._kd_layers is None:
            model = self._build()
            if self.config.kd_layers:
                modules = dict(model.named_modules())
                unknown = [n for n in self.config.kd_layers if n not in modules or not n]
                if unknown:
                    raise ModelError(
                        f"kd_layers {unknown} are not modules of {self.config.model}; "
                        f"its modules include: {', '.join(list(n for n in modules if n)[:12])}"
                    )
                self._kd_layers = tuple(self.config.kd_layers)
            else:
                self._kd_layers = feature_taps(model, self.example)
        return self._kd_layers

    def layer_limits(self) -> list[LayerLimits]:
        """Every prunable layer with its pruning group, in the model's order."""
        if self._limits is None:
            self._limits = layer_limits(self._build(), self.example)
            if all(lim.group is None for lim in self._limits):
                self.progress.say(
                    f"{self.config.model} has nothing to prune (no layer's width can change safely): "
                    "only precisions are chosen"
                )
        return self._limits

    def device_precisions(self) -> tuple[Precision, ...]:
        """The precisions the device's runtime runs (its probe at start), in declaration order."""
        return device_precisions(self.device.info())

    def int8_weight_bits(self) -> int:
        """The bits of int8 layers' weights: `[compress] int8_weight_bits`, else the widest the
        device's int8 kernels sum exactly (8 where its probe does not say); asked once."""
        if self._int8_weight_bits is None:
            forced = self.config.compress.int8_weight_bits
            self._int8_weight_bits = forced or int8_exact_weight_bits(self.device.info()) or 8
        return self._int8_weight_bits

    def validate(self, policy: Policy) -> None:
        validate(policy, self.config.model, self.layer_limits())

    # --- stages ------------------------------------------------------------------------------

    def compress(
        self, policy: Policy, batches: DataLoader, calibration_batches: int | None = None
    ) -> tuple[nn.Module, int]:
        """The teacher's student per `policy`: pruned, BN re-estimated on `batches` and folded,
        fake-quantized and calibrated (not fine-tuned); with the teacher's parameter count."""
        count = calibration_batches or self.config.compress.calibration_batches
        return student_of(
            self.teacher,
            policy,
            self.example,
            self.config.compress.round_to,
            Calibration(batches, count),
            self.int8_weight_bits(),
        )

    def variant(self, policy: Policy, seed: int = 0) -> nn.Module:
        """An untrained model per `policy`, for latency only (ranges from random data)."""
        config = self.config
        return variant_model(
            config.model,
            policy,
            self.data.num_classes,
            self.input_shape,
            config.compress.round_to,
            seed,
            config.factory_kwargs,
        )

    def export(self, model: nn.Module, policy: Policy, path: Path) -> ExportedModel:
        """ONNX at the policy's precisions, with each layer's compute node named."""
        return export_policy_model(model, policy, path, self.input_shape, self.config.compress.opset)

    def export_reference(self, path: Path) -> ExportedModel:
        """The FP32 teacher as the reference every speedup is measured against (BN folded by the
        exporter). Its layer map comes from an export of the teacher folded by the pipeline:
        the exporter names nodes by module scope, the same in both; checked, never assumed."""
        export_onnx(self.teacher, path, self.input_shape, self.config.compress.opset)
        policy = Policy.uniform(self.config.model, [lim.name for lim in self.layer_limits()], 1.0, Precision.FP32)
        folded = copy.deepcopy(self.teacher)
        fold_batchnorm(folded)
        with tempfile.TemporaryDirectory() as tmp:
            names = self.export(folded, policy, Path(tmp) / "folded.onnx").layer_nodes
        nodes = {n.name for n in onnx.load(path, load_external_data=False).graph.node}
        missing = sorted(layer for layer, node in names.items() if node not in nodes)
        if missing:
            raise ValueError(
                f"the FP32 export has no node for layers {missing[:5]} under the names a folded export gives"
            )
        return ExportedModel(path, names, {Precision.FP32: len(names)})

    def predict(self, model: ExportedModel | Path) -> Prediction:
        """Latency from the device's LUT; kernels it lacks are profiled on the device now."""
        return self.predictor.predict(model.path if isinstance(model, ExportedModel) else model)

    def check_lut_drift(self, reference: Path, measured_ms: float) -> bool:
        """When the LUT predicts the FP32 model at `reference` further than `[lut] max_drift` from
        `measured_ms`, its measurement on the device, the device has changed since the LUT was
        measured: from now on every kernel is profiled afresh (the FP32 model's first), and this
        returns True. A pinned or offline LUT is only warned about."""
        lut, predictor = self.config.lut, self.predictor
        if not lut.max_drift or predictor.base is None or not predictor.base_trusted:
            return False
        predicted = self.predict(reference).latency_ms
        drift = predicted / measured_ms - 1
        if abs(drift) <= lut.max_drift:
            return False
        said = (
            f"the LUT (version {predictor.base.id}) predicts the FP32 model at {predicted:.3f} ms, the device "
            f"measures {measured_ms:.3f} ms ({drift:+.0%}, past [lut] max_drift = {lut.max_drift:g})"
        )
        if lut.version is not None or lut.offline:
            self.progress.say(f"warning: {said}; the LUT is pinned or offline, so its latencies are used as they are")
            return False
        self.progress.say(f"{said}: the device has changed since; every kernel is profiled afresh")
        log.warning("lut.drift", version=predictor.base.id, predicted_ms=predicted, measured_ms=measured_ms)
        predictor.distrust_base()
        self.predict(reference)
        return True

    def register(self, path: Path) -> None:
        """Remember an exported model (a final model, the FP32 reference) in the store for this
        device, so that its nightly re-profile keeps the model's kernels fresh in the LUT."""
        self.predictor.register(path)

    def distill_set(self, config: DistillConfig) -> TensorDataset:
        """The training split with the teacher's outputs stored, unless `config` augments (made once each)."""
        if config.augment not in self._distill_sets:
            train = tensor_dataset(self.data, "train")
            self._distill_sets[config.augment] = distill_dataset(self.teacher, self.kd_layers, train, config)
        return self._distill_sets[config.augment]

    def distill(
        self, student: nn.Module, config: DistillConfig, loader: DataLoader, fit: FitProgress | None = None
    ) -> DistillReport:
        """Fine-tune `student` in place from the teacher (feature-aligned distillation); with
        `config.patience`, stopped early on validation accuracy."""
        return distill(student, self.teacher, self.kd_layers, loader, config, fit, lambda m: self.accuracy(m, "val"))

    def accuracy(self, model: nn.Module, split: str) -> float:
        """Top-1 in torch on "val" or "test". On "test", int8 layers compute what onnxruntime's
        integer kernels do (`runtime_arithmetic`): an int8 CNN's accuracy is then the runtime's
        (float layers between them still round as torch's kernels do)."""
        if split == "test":
            with runtime_arithmetic(model):
                return accuracy(model, self.loaders.test)
        return accuracy(model, getattr(self.loaders, split))

    def fidelity(self, model: nn.Module, split: str) -> Fidelity:
        """Top-1, agreement with the teacher's top-1 and KL(teacher || model) on "val" or "test":
        the last two measure how close the model stays to its teacher, more smoothly than top-1."""
        return fidelity_of(model, getattr(self.loaders, split), self.teacher_logits(split)[0])

    def weight_counts(self) -> dict[str, int]:
        """Each prunable layer's FP32 weight count in the uncompressed model."""
        modules = dict(self.teacher.named_modules())
        return {lim.name: modules[lim.name].weight.numel() for lim in self.layer_limits()}

    def teacher_logits(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's logits on a split and the split's labels (computed once)."""
        if split not in self._teacher_logits:
            self._teacher_logits[split] = _logits(self.teacher, getattr(self.loaders, split))
        return self._teacher_logits[split]

    def device_classes(self, path: Path, on: Device | None = None) -> np.ndarray:
        """Test-split top-1 classes of an exported model as the device's runtime computes them
        (or device `on`'s)."""
        return device_classes(on or self.device, path, self.data.x_test, self.config.device.benchmark_batch)

    def device_accuracy(self, path: Path) -> float:
        """Test-split top-1 of an exported model as the device's runtime computes it."""
        return float((self.device_classes(path) == self.data.y_test).mean())

    def agreement(self, path: Path, reference: Path, on: Device | None = None) -> tuple[float, Agreement]:
        """The exported model's test-split top-1 on the device (or on device `on`), and its
        agreement with the FP32 `reference` on the device (its classes are computed once)."""
        if reference not in self._reference_classes:
            self._reference_classes[reference] = self.device_classes(reference)
        classes, labels = self.device_classes(path, on), self.data.y_test
        found = agreement(labels, self._reference_classes[reference], classes, self.data.num_classes)
        return float((classes == labels).mean()), found

    def paired(self, path: Path, reference: Path) -> PairedLatency:
        """Benchmark the model in turn with the FP32 reference (`[device] benchmark_rounds`)."""
        return self.paired_many([path], reference)[0]

    def paired_many(self, paths: Sequence[Path], reference: Path) -> list[PairedLatency]:
        """Benchmark the models in the same rounds, each round ending with the FP32 reference."""
        device = self.config.device
        return paired_latencies(self.device, paths, reference, device.benchmark_rounds, device.benchmark_batch)

    # --- whole results -----------------------------------------------------------------------

    def baseline(self, path: Path, measured: Latency | None = None) -> Baseline:
        """The FP32 reference at `path` (`export_reference`) predicted, verified on the device and
        measured there: `measured`, taken in rounds with a compressed model, or one benchmark now."""
        teacher = self.teacher
        predicted = self.predict(path)
        if measured is None:
            self.progress.say("measuring the FP32 baseline on the device ...")
            measured = Latency.of(self.device.benchmark(path, batch_size=self.config.device.benchmark_batch).latency)
        params = sum(p.numel() for p in teacher.parameters())
        return Baseline(
            self.config.model,
            self.data.name,
            self.accuracy(teacher, "val"),
            self.accuracy(teacher, "test"),
            self.device_accuracy(path),
            params,
            4 * params,
            predicted.latency_ms,
            measured,
            path.stat().st_size,
        )

    def final_model(
        self, policy: Policy, distill_config: DistillConfig, train_set: TensorDataset, path: Path, reference: Path
    ) -> FinalResult:
        """`policy` fine-tuned for `distill_config.epochs`, exported to `path`, predicted, verified
        on the device and benchmarked in turn with the FP32 `reference`. The record's `onnx` is
        the file's name: the driver makes it relative to its run directory."""
        student, before = self.compress(policy, self.loaders.train)
        loader = distill_loader(train_set, self.config.data.batch_size, self.config.data.seed)
        fit = self.progress.fit(f"fine-tune ({distill_config.epochs} epochs)")
        report = self.distill(student, distill_config, loader, fit)
        exported = self.export(student, policy, path)
        prediction = self.predict(exported)
        paired = self.paired(exported.path, reference)
        sizes = size_report(student, policy, before)
        on_device, agrees = self.agreement(exported.path, reference)
        val = self.fidelity(student, "val")
        model = FinalModel(
            policy,
            val.accuracy,
            self.accuracy(student, "test"),
            on_device,
            sizes.params,
            sizes.params_reduction,
            sizes.fp32_bytes,
            sizes.effective_bytes,
            sizes.compression,
            prediction.latency_ms,
            paired.model,
            paired.baseline,
            paired.speedup,
            paired.rounds,
            exported.path.name,
            file_bytes=exported.path.stat().st_size,
            agreement=agrees,
            val_kl=val.kl,
            storage_compression_ratio=storage_compression_ratio(policy, self.weight_counts()),
        )
        return FinalResult(model, exported, paired, report, sizes)


@dataclass(frozen=True)
class Fidelity:
    """How a model does on a split, against the labels and against its teacher."""

    accuracy: float
    agreement: float  # share of inputs where its top-1 is the teacher's
    kl: float  # mean KL(teacher || model) of the class distributions, nats


def fidelity_of(model: nn.Module, loader: DataLoader, teacher_logits: torch.Tensor) -> Fidelity:
    """`model`'s Fidelity on the (unshuffled) `loader`, whose teacher gave `teacher_logits`."""
    logits, labels = _logits(model, loader)
    kl = torch.nn.functional.kl_div(
        logits.log_softmax(1), teacher_logits.log_softmax(1), log_target=True, reduction="batchmean"
    )
    n = len(labels)
    return Fidelity(
        int((logits.argmax(1) == labels).sum()) / n,
        int((logits.argmax(1) == teacher_logits.argmax(1)).sum()) / n,
        float(kl),
    )


def _logits(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        pairs = [(model(x), y) for x, y in loader]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


@dataclass(frozen=True)
class FinalResult:
    """What `Workbench.final_model` made: the record and the pieces drivers write beside it."""

    model: FinalModel
    exported: ExportedModel
    paired: PairedLatency
    distill: DistillReport
    sizes: SizeReport
