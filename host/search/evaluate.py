"""One episode's score: apply the policy to the teacher, predict its latency from the LUT, fine-tune
it briefly by distillation and measure validation accuracy (never the test split).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from host.compress.distill import DistillConfig, distill
from host.compress.export import export_policy_model
from host.compress.pipeline import compressed
from host.compress.policy import Policy
from host.compress.size import size_report
from host.compress.train import accuracy
from host.latency.predict import LatencyPredictor, Prediction
from host.progress import Progress


@dataclass(frozen=True)
class EpisodeResult:
    val_accuracy: float
    latency_ms: float
    params: int
    size_bytes: int
    lut_version_ids: tuple[int, ...]
    profiled_kernels: int
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Evaluator:
    """Scores policies for one model, teacher, data set and device."""

    model_name: str
    teacher: torch.nn.Module
    train_set: Any
    val_loader: DataLoader
    predictor: LatencyPredictor
    input_shape: tuple[int, ...]
    workdir: Path
    distill_config: DistillConfig
    samples: int  # training images per episode fine-tune
    batch_size: int = 32
    round_to: int = 8
    calibration_batches: int = 2
    opset: int = 17
    # Live status of the running episode (the caller sets its context: controller, episode, best).
    progress: Progress | None = None

    def loader(self, episode: int) -> DataLoader:
        generator = torch.Generator().manual_seed(self.distill_config.seed + episode)
        n = len(self.train_set)
        index = torch.randperm(n, generator=generator)[: min(self.samples, n)]
        return DataLoader(
            Subset(self.train_set, index.tolist()), batch_size=self.batch_size, shuffle=True, generator=generator
        )

    def latency(self, student: torch.nn.Module, policy: Policy, path: Path) -> Prediction:
        export_policy_model(student, policy, path, self.input_shape, self.opset)
        return self.predictor.predict(path)

    def _status(self, text: str) -> None:
        if self.progress is not None:
            self.progress.live(text, force=True)

    def __call__(self, policy: Policy, episode: int) -> EpisodeResult:
        t0 = time.monotonic()
        example = torch.zeros((1, *self.input_shape))
        loader = self.loader(episode)
        self._status("pruning, re-estimating BatchNorm, quantizing ...")
        student, before = compressed(self.teacher, policy, example, self.round_to, loader, self.calibration_batches)
        t1 = time.monotonic()
        self._status("latency from the LUT (kernels it lacks are profiled on the device) ...")
        prediction = self.latency(student, policy, self.workdir / "candidate.onnx")
        t2 = time.monotonic()
        fit = self.progress.fit("fine-tune", lines=False) if self.progress is not None else None
        distill(student, self.teacher, self.model_name, loader, replace(self.distill_config, seed=episode), fit)
        self._status("validation accuracy ...")
        acc = accuracy(student, self.val_loader)
        t3 = time.monotonic()
        sizes = size_report(student, policy, before)
        return EpisodeResult(
            acc,
            prediction.latency_ms,
            sizes.params,
            sizes.effective_bytes,
            prediction.version_ids,
            prediction.profiled_kernels,
            {"compress_s": t1 - t0, "latency_s": t2 - t1, "finetune_s": t3 - t2},
        )
