"""One episode's score: apply the policy to the teacher, predict its latency from the LUT, fine-tune
it briefly by distillation and measure validation accuracy (never the test split).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from host.compress.distill import DistillConfig
from host.compress.policy import Policy
from host.compress.size import size_report
from host.workbench import Workbench


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
        generator = torch.Generator().manual_seed(self.distill_config.seed + episode)
        n = len(self.train_set)
        index = torch.randperm(n, generator=generator)[: min(self.samples, n)]
        return DataLoader(
            Subset(self.train_set, index.tolist()),
            batch_size=self.bench.config.data.batch_size,
            shuffle=True,
            generator=generator,
        )

    def __call__(self, policy: Policy, episode: int) -> EpisodeResult:
        bench, shown = self.bench, self.bench.progress
        t0 = time.monotonic()
        loader = self.loader(episode)
        shown.live("pruning, re-estimating BatchNorm, quantizing ...", force=True)
        student, before = bench.compress(policy, loader)
        t1 = time.monotonic()
        shown.live("latency from the LUT (kernels it lacks are profiled on the device) ...", force=True)
        prediction = bench.predict(bench.export(student, policy, self.workdir / "candidate.onnx"))
        t2 = time.monotonic()
        bench.distill(student, replace(self.distill_config, seed=episode), loader, shown.fit("fine-tune", lines=False))
        shown.live("validation accuracy ...", force=True)
        fidelity = bench.fidelity(student, "val")
        t3 = time.monotonic()
        sizes = size_report(student, policy, before)
        return EpisodeResult(
            fidelity.accuracy,
            prediction.latency_ms,
            sizes.params,
            sizes.effective_bytes,
            prediction.version_ids,
            prediction.profiled_kernels,
            {"compress_s": t1 - t0, "latency_s": t2 - t1, "finetune_s": t3 - t2},
            fidelity.agreement,
            fidelity.kl,
        )
