"""One episode's score: apply the policy to the teacher, predict its latency from the LUT, fine-tune
it briefly by distillation and measure validation accuracy (never the test split).

Two phases, so that a batch of episodes can be scored in parallel without disturbing the device
(host/search/scale.py): `prepare` (compress, export, LUT latency: kernels the LUT lacks are
profiled on the device) and `finetune` (distillation and validation, which needs no device).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from host.compress.apply import random_calibration, student_of
from host.compress.distill import DistillConfig, distill
from host.compress.policy import Policy
from host.compress.size import SizeReport, size_report
from host.compress.train import accuracy
from host.latency.predict import Prediction
from host.workbench import Fidelity, Workbench, fidelity_of


@dataclass(frozen=True)
class EpisodeResult:
    val_accuracy: float
    latency_ms: float
    params: int
    size_bytes: int
    lut_version_ids: tuple[int, ...]
    profiled_kernels: int
    seconds: dict[str, float] = field(default_factory=dict)
    val_agreement: float | None = None  # share of validation inputs where the student's top-1 is the teacher's
    val_kl: float | None = None  # mean KL(teacher || student) on the validation split


@dataclass(frozen=True)
class Unscored:
    """An episode whose evaluation failed (after its retry): nothing is learnt from it."""

    reason: str


@dataclass
class Prepared:
    """Phase one of an episode: the compressed student (not fine-tuned) and its LUT latency."""

    episode: int
    policy: Policy
    student: nn.Module
    loader_state: torch.Tensor  # the episode loader's generator after compression used it
    prediction: Prediction
    sizes: SizeReport
    seconds: dict[str, float]

    def result(self, tuned: Tuned) -> EpisodeResult:
        p, s = self.prediction, self.sizes
        return EpisodeResult(
            tuned.fidelity.accuracy,
            p.latency_ms,
            s.params,
            s.effective_bytes,
            p.version_ids,
            p.profiled_kernels,
            {**self.seconds, "finetune_s": tuned.seconds},
            tuned.fidelity.agreement,
            tuned.fidelity.kl,
        )


@dataclass(frozen=True)
class Tuned:
    """Phase two of an episode: the fine-tuned student's validation figures."""

    fidelity: Fidelity
    seconds: float


def episode_loader(train_set: TensorDataset, samples: int, batch_size: int, seed: int, episode: int) -> DataLoader:
    """The episode's `samples` training images, drawn and shuffled by the seed `seed + episode`."""
    generator = torch.Generator().manual_seed(seed + episode)
    n = len(train_set)
    index = torch.randperm(n, generator=generator)[: min(samples, n)]
    return DataLoader(Subset(train_set, index.tolist()), batch_size=batch_size, shuffle=True, generator=generator)


@dataclass(frozen=True)
class FinetuneContext:
    """What every episode's fine-tune reads, the same for all: sent once to a worker."""

    teacher: nn.Module
    kd_layers: tuple[str, ...]
    train_set: TensorDataset  # the distillation set (teacher outputs stored)
    val_set: TensorDataset
    teacher_val_logits: torch.Tensor
    samples: int
    batch_size: int
    distill_config: DistillConfig
    input_shape: tuple[int, ...]
    round_to: int
    int8_weight_bits: int

    def student(self, policy: Policy, state: dict[str, torch.Tensor]) -> nn.Module:
        """The student `policy` makes of the teacher, holding `state` (its state_dict after
        compression: fake-quantized modules travel as state, not pickled)."""
        example = torch.zeros((1, *self.input_shape))
        student, _ = student_of(
            self.teacher, policy, example, self.round_to, random_calibration(self.input_shape), self.int8_weight_bits
        )
        student.load_state_dict(state)
        return student

    def finetune(self, student: nn.Module, episode: int, loader_state: torch.Tensor) -> Tuned:
        """Distil `student` in place on the episode's images (its loader continuing from
        `loader_state`) and score it on validation."""
        t0 = time.monotonic()
        loader = episode_loader(self.train_set, self.samples, self.batch_size, self.distill_config.seed, episode)
        assert loader.generator is not None
        loader.generator.set_state(loader_state)
        val = DataLoader(self.val_set, batch_size=self.batch_size)
        config = replace(self.distill_config, seed=episode)
        distill(student, self.teacher, self.kd_layers, loader, config, score=lambda m: accuracy(m, val))
        return Tuned(fidelity_of(student, val, self.teacher_val_logits), time.monotonic() - t0)


@dataclass
class Evaluator:
    """Scores policies on one workbench: `samples` training images per episode's fine-tune."""

    bench: Workbench
    train_set: TensorDataset  # the training split distillation reads (teacher outputs stored)
    workdir: Path  # the candidate's ONNX file goes here
    distill_config: DistillConfig
    samples: int

    def loader(self, episode: int) -> DataLoader:
        """The episode's `samples` training images, drawn and shuffled by the episode's seed."""
        batch_size = self.bench.config.data.batch_size
        return episode_loader(self.train_set, self.samples, batch_size, self.distill_config.seed, episode)

    def __call__(self, policy: Policy, episode: int) -> EpisodeResult:
        prepared = self.prepare(policy, episode)
        return prepared.result(self.finetune(prepared))

    def prepare(self, policy: Policy, episode: int) -> Prepared:
        """Compress the teacher per `policy`, export the student and predict its latency from the
        LUT (profiling the kernels it lacks)."""
        bench, shown = self.bench, self.bench.progress
        t0 = time.monotonic()
        loader = self.loader(episode)
        shown.live("pruning, re-estimating BatchNorm, quantizing ...", force=True)
        student, before = bench.compress(policy, loader)
        t1 = time.monotonic()
        shown.live("latency from the LUT (kernels it lacks are profiled on the device) ...", force=True)
        prediction = bench.predict(bench.export(student, policy, self.workdir / "candidate.onnx"))
        t2 = time.monotonic()
        assert loader.generator is not None
        return Prepared(
            episode,
            policy,
            student,
            loader.generator.get_state(),
            prediction,
            size_report(student, policy, before),
            {"compress_s": t1 - t0, "latency_s": t2 - t1},
        )

    def finetune(self, prepared: Prepared) -> Tuned:
        """Phase two here, in this process."""
        bench, shown = self.bench, self.bench.progress
        t0 = time.monotonic()
        loader = self.loader(prepared.episode)
        assert loader.generator is not None
        loader.generator.set_state(prepared.loader_state)
        config = replace(self.distill_config, seed=prepared.episode)
        bench.distill(prepared.student, config, loader, shown.fit("fine-tune", lines=False))
        shown.live("validation accuracy ...", force=True)
        return Tuned(bench.fidelity(prepared.student, "val"), time.monotonic() - t0)

    def context(self) -> FinetuneContext:
        """What a worker needs to fine-tune any episode of this evaluator."""
        bench = self.bench
        return FinetuneContext(
            bench.teacher,
            bench.kd_layers,
            self.train_set,
            bench.loaders.val.dataset,
            bench.teacher_logits("val")[0],
            self.samples,
            bench.config.data.batch_size,
            self.distill_config,
            bench.input_shape,
            bench.config.compress.round_to,
            bench.int8_weight_bits(),
        )
