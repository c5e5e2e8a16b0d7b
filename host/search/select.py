"""Which of a controller's episodes becomes its final model.

An episode's accuracy comes from a one-epoch fine-tune of a few hundred images: on ResNet18 the
same policy scored 0.88 and 0.85 in two episodes, and policies whose episodes read 0.65 and 0.94
both reached 0.94 after three epochs. So the best single episode is mostly the luckiest one.
With `top` > 1, `top` distinct policies are fine-tuned again, all alike (`epochs` on the whole
training split), benchmarked on the device in the same rounds (each round: every candidate, then
the FP32 model), and the choice is made at that fidelity, with that measured speedup:

- `reward`: the candidates are the best episodes by reward; the choice, the best reward
  recomputed with that accuracy and speed;
- `fastest-within`: the candidates are the `top - 1` fastest episodes (LUT prediction) whose
  accuracy is within `pool_slack` of the controller's best episode, and its most accurate other
  episode; the choice, the highest measured speedup
  among them whose accuracy is within `max_accuracy_drop` of the unpruned network's at the same
  fidelity (each layer at its fastest allowed precision; the search measures it once): the
  objective "fastest model that keeps the teacher's accuracy", judged among equals. (Candidates
  by reward would skip the safe policies: a latency-first reward ranks an aggressive policy that
  lost four points in its episode above one that kept them.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from host.compress.distill import DistillConfig, distill_loader
from host.compress.policy import Policy
from host.runs import Candidate, EpisodeRow
from host.search.loop import RewardReference
from host.search.reward import RewardConfig, reward
from host.search.space import SearchSpace
from host.workbench import Workbench

RULES = ("reward", "fastest-within")


@dataclass(frozen=True)
class SelectConfig:
    """`[select]`: how a controller's final policy is chosen from its episodes."""

    top: int = 1  # candidates fine-tuned again; 1: the best episode as it is
    epochs: int = 2  # their common fine-tune (final_distill's settings, this many epochs)
    rule: str = "reward"  # see the module docstring
    max_accuracy_drop: float = 0.005  # fastest-within: 0.005 = half a point
    # fastest-within's candidates: the fastest episodes within this much validation accuracy of the
    # controller's best episode (a one-epoch fine-tune's accuracy varies by about two points)
    pool_slack: float = 0.02

    def __post_init__(self) -> None:
        if self.top < 1 or self.epochs < 1:
            raise ValueError(f"top = {self.top} and epochs = {self.epochs} must be at least 1")
        if self.rule not in RULES:
            raise ValueError(f"rule {self.rule!r}; choose among {', '.join(RULES)}")
        if not 0.0 <= self.max_accuracy_drop < 1.0 or not 0.0 <= self.pool_slack < 1.0:
            raise ValueError(
                f"max_accuracy_drop = {self.max_accuracy_drop} and pool_slack = {self.pool_slack}: give "
                "fractions, e.g. 0.005 for half a point"
            )


def candidates(rows: list[EpisodeRow], top: int) -> list[EpisodeRow]:
    """The `top` best episodes by reward, one per distinct policy (the first time it was seen)."""
    best: dict[str, EpisodeRow] = {}
    for row in sorted(rows, key=lambda r: (-r.reward, r.episode)):
        best.setdefault(row.policy.to_json(), row)
    return list(best.values())[:top]


def fastest_candidates(rows: list[EpisodeRow], top: int, slack: float) -> list[EpisodeRow]:
    """`fastest-within`'s candidates, one per distinct policy: the `top - 1` fastest episodes (LUT
    prediction) whose validation accuracy is within `slack` of the best episode's, and the most
    accurate of the others, a safe choice should none of the fast ones keep the accuracy. Fewer
    within: the most accurate make up the number."""
    distinct: dict[str, EpisodeRow] = {}
    for row in sorted(rows, key=lambda r: r.episode):
        distinct.setdefault(row.policy.to_json(), row)
    best_accuracy = max(r.val_accuracy for r in distinct.values())
    within = sorted(
        (r for r in distinct.values() if r.val_accuracy >= best_accuracy - slack),
        key=lambda r: (r.predicted_latency_ms, r.episode),
    )
    pool = within[: max(top - 1, 1)]
    rest = sorted((r for r in distinct.values() if r not in pool), key=lambda r: (-r.val_accuracy, r.episode))
    return [*pool, *rest][:top]


@dataclass(frozen=True)
class Selection:
    """What a selection compares candidates with."""

    distill: DistillConfig  # the final fine-tune's settings (the candidates get `epochs` of it)
    score: RewardConfig
    reward_reference: RewardReference  # the FP32 model's predicted latency and size
    reference_onnx: Path  # the FP32 model every candidate is benchmarked in turn with
    floor_accuracy: float | None = None  # fastest-within: the unpruned network at the same fidelity


@dataclass(frozen=True)
class Measured:
    """A candidate after the common fine-tune: its accuracy, and its speed measured on the device."""

    val_accuracy: float
    val_kl: float  # KL(teacher || candidate) on the validation split
    measured_latency_ms: float
    speedup: float  # over the FP32 model, in interleaved rounds


def select(
    bench: Workbench, rows: list[EpisodeRow], config: SelectConfig, context: Selection, workdir: Path
) -> tuple[EpisodeRow, tuple[Candidate, ...]]:
    """The episode whose policy becomes the final model, and the candidates it was chosen from.

    Candidates are measured on the device, not predicted: a LUT prediction composed of kernels
    measured inside other models missed a final model by 11% on ResNet18 here, more than the
    gaps between candidates. `fastest-within` takes the fastest candidate within
    `max_accuracy_drop` of `floor_accuracy` (the unpruned network at the same fidelity), else of
    the most accurate candidate; when none is within, the most accurate one (the faster of equals)."""
    pool = (
        candidates(rows, config.top)
        if config.rule == "reward"
        else fastest_candidates(rows, config.top, config.pool_slack)
    )
    if len(pool) == 1:
        return pool[0], ()
    measured = _measure(bench, pool, replace(context.distill, epochs=config.epochs), context.reference_onnx, workdir)
    if config.rule == "reward":
        base = context.reward_reference

        def score(r: EpisodeRow) -> float:
            m = measured[r.episode]
            return reward(
                context.score.fidelity(m.val_accuracy, m.val_kl),
                base.latency_ms / m.speedup,
                r.size_bytes,
                base.latency_ms,
                base.size_bytes,
                context.score,
            )

        chosen = max(pool, key=score)
    else:
        best = max(m.val_accuracy for m in measured.values())
        floor = (best if context.floor_accuracy is None else context.floor_accuracy) - config.max_accuracy_drop
        within = [r for r in pool if measured[r.episode].val_accuracy >= floor]
        chosen = (
            max(within, key=lambda r: measured[r.episode].speedup)
            if within
            else max(pool, key=lambda r: (measured[r.episode].val_accuracy, measured[r.episode].speedup))
        )
    return chosen, tuple(_candidate(r, measured[r.episode], r is chosen) for r in pool)


def _candidate(row: EpisodeRow, m: Measured, chosen: bool) -> Candidate:
    return Candidate(
        row.episode,
        row.predicted_latency_ms,
        row.val_accuracy,
        m.val_accuracy,
        chosen,
        m.measured_latency_ms,
        m.speedup,
        m.val_kl,
    )


def _measure(
    bench: Workbench, pool: list[EpisodeRow], distill: DistillConfig, reference: Path, workdir: Path
) -> dict[int, Measured]:
    """Each candidate fine-tuned alike and scored on validation; then all of them benchmarked on
    the device in the same rounds, each round ending with the FP32 reference."""
    paths, scores = [], []
    for row in pool:
        student = fine_tuned(bench, row.policy, distill, f"the policy of episode {row.episode + 1}")
        exported = bench.export(student, row.policy, workdir / f"candidate_{row.controller}_{row.episode}.onnx")
        paths.append(exported.path)
        scores.append(bench.fidelity(student, "val"))
    bench.progress.live(f"{len(pool)} candidates: measuring on the device in turn ...", force=True)
    paired = bench.paired_many(paths, reference)
    return {
        row.episode: Measured(f.accuracy, f.kl, p.model.median_ms, p.speedup)
        for row, f, p in zip(pool, scores, paired, strict=True)
    }


def fine_tuned(bench: Workbench, policy: Policy, distill: DistillConfig, what: str) -> nn.Module:
    """`policy` applied to the teacher and fine-tuned by `distill`."""
    student, _ = bench.compress(policy, bench.loaders.train)
    loader = distill_loader(bench.distill_set(distill), bench.config.data.batch_size, bench.config.data.seed)
    bench.progress.live(f"{what}: fine-tuning {distill.epochs} epochs ...", force=True)
    bench.distill(student, distill, loader, bench.progress.fit("selection", lines=False))
    return student


def unpruned_fastest(space: SearchSpace) -> Policy:
    """Every layer unpruned at its fastest allowed precision: what the device runs of the teacher
    without pruning (the `fastest-within` rule's reference)."""
    n = len(space.layers)
    return space.policy([1.0] * n, [space.allowed_at(t)[0] for t in range(n)])
