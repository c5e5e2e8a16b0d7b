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
  episode, none of them dominated by another episode (slower and less accurate) while others
  remain; the choice, the highest measured speedup
  among them whose accuracy is within `max_accuracy_drop` of the unpruned network's at the same
  fidelity (each layer at its fastest allowed precision; the search measures it once): the
  objective "fastest model that keeps the teacher's accuracy", judged among equals. (Candidates
  by reward would skip the safe policies: a latency-first reward ranks an aggressive policy that
  lost four points in its episode above one that kept them.) That unpruned network, measured in
  the same rounds, is a candidate too: the answer when it runs faster than the candidates within,
  or when even the most accurate candidate falls clearly short of it (MobileNetV2 here: pruning a
  tenth of its channels cost eight points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from host.compress.distill import DistillConfig, distill_loader
from host.compress.policy import Policy
from host.runs import Candidate, EpisodeRow, SelectionFloor
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
    """`fastest-within`'s candidates, one per distinct policy and none dominated (another episode
    predicted as fast or faster and as accurate or more, one of them strictly) while undominated
    ones remain: the `top - 1` fastest episodes (LUT prediction) whose validation accuracy is within
    `slack` of the best episode's, then the most accurate of the others, a safe choice should none
    of the fast ones keep the accuracy."""
    distinct: dict[str, EpisodeRow] = {}
    for row in sorted(rows, key=lambda r: r.episode):
        distinct.setdefault(row.policy.to_json(), row)
    front = [r for r in distinct.values() if not any(_dominates(o, r) for o in distinct.values())]
    best_accuracy = max(r.val_accuracy for r in front)
    within = sorted(
        (r for r in front if r.val_accuracy >= best_accuracy - slack),
        key=lambda r: (r.predicted_latency_ms, r.episode),
    )
    pool = within[: max(top - 1, 1)]
    rest = sorted(
        (r for r in distinct.values() if r not in pool),
        key=lambda r: (r not in front, -r.val_accuracy, r.episode),
    )
    return [*pool, *rest][:top]


def _dominates(a: EpisodeRow, b: EpisodeRow) -> bool:
    """`a` is predicted as fast as `b` or faster, scored as accurate or more, and strictly one of them."""
    at_least = a.predicted_latency_ms <= b.predicted_latency_ms and a.val_accuracy >= b.val_accuracy
    return at_least and (a.predicted_latency_ms < b.predicted_latency_ms or a.val_accuracy > b.val_accuracy)


@dataclass(frozen=True)
class Selection:
    """What a selection compares candidates with."""

    distill: DistillConfig  # the final fine-tune's settings (the candidates get `epochs` of it)
    score: RewardConfig
    reward_reference: RewardReference  # the FP32 model's predicted latency and size
    reference_onnx: Path  # the FP32 model every candidate is benchmarked in turn with
    floor: SelectionFloor | None = None  # fastest-within: the unpruned network at the same fidelity
    floor_onnx: Path | None = None  # its exported model, a candidate too (None: a reference only)


@dataclass(frozen=True)
class Chosen:
    """A selection's answer: the policy for the final model and where it came from."""

    policy: Policy
    episode: int | None  # None: the selection floor
    candidates: tuple[Candidate, ...]  # what it was chosen from (none: the best episode as it is)


@dataclass(frozen=True)
class Measured:
    """A candidate after the common fine-tune: its accuracy, and its speed measured on the device."""

    val_accuracy: float
    val_kl: float | None  # KL(teacher || candidate) on the validation split (None: not measured)
    measured_latency_ms: float
    speedup: float  # over the FP32 model, in interleaved rounds


def select(bench: Workbench, rows: list[EpisodeRow], config: SelectConfig, context: Selection, workdir: Path) -> Chosen:
    """The policy that becomes the final model, and the candidates it was chosen from.

    Candidates are measured on the device, not predicted: a LUT prediction composed of kernels
    measured inside other models missed a final model by 11% on ResNet18 here, more than the
    gaps between candidates. `fastest-within` takes the fastest candidate within
    `max_accuracy_drop` of the floor (the unpruned network at the same fidelity), else of the
    most accurate candidate; the floor itself competes when exported. None within: the most
    accurate candidate (the faster of equals), unless it falls clearly short of the floor (beyond
    the validation split's noise), when only the exported floor remains."""
    pool = (
        candidates(rows, config.top)
        if config.rule == "reward"
        else fastest_candidates(rows, config.top, config.pool_slack)
    )
    if len(pool) == 1:
        return Chosen(pool[0].policy, pool[0].episode, ())
    floor = context.floor if config.rule == "fastest-within" else None
    distill = replace(context.distill, epochs=config.epochs)
    measured, floor_measured = _measure(
        bench, pool, distill, context.reference_onnx, workdir, floor, context.floor_onnx
    )
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

        winner = max(pool, key=score)
        chosen = Chosen(winner.policy, winner.episode, ())
    else:
        best = max(m.val_accuracy for m in measured.values())
        limit = (best if floor is None else floor.val_accuracy) - config.max_accuracy_drop
        options = [
            (measured[r.episode].speedup, Chosen(r.policy, r.episode, ()))
            for r in pool
            if measured[r.episode].val_accuracy >= limit
        ]
        safest = max(pool, key=lambda r: (measured[r.episode].val_accuracy, measured[r.episode].speedup))
        clearly_below = floor_measured is not None and measured[safest.episode].val_accuracy < limit - _noise(floor)
        if not options and not clearly_below:  # none within, the most accurate not told apart from them
            options = [(measured[safest.episode].speedup, Chosen(safest.policy, safest.episode, ()))]
        if floor is not None and floor_measured is not None:
            options.append((floor_measured.speedup, Chosen(floor.policy, None, ())))
        chosen = max(options, key=lambda option: option[0])[1]  # the first of equals: an episode
    table = [_candidate(r, measured[r.episode], r.episode == chosen.episode) for r in pool]
    if floor is not None and floor_measured is not None:
        table.append(_floor_candidate(floor, floor_measured, chosen.episode is None))
    return replace(chosen, candidates=tuple(table))


def _noise(floor: SelectionFloor | None) -> float:
    """Two standard deviations of the difference of two validation accuracies near the floor's
    (binomial, on the floor's number of validation images; 0 when that is unknown): 2.1 points on
    720 images at 96% (3 on 288). A shortfall within it cannot be told from one within the tolerance."""
    if floor is None or not floor.val_images:
        return 0.0
    p = floor.val_accuracy
    return 2.0 * math.sqrt(2.0 * p * (1.0 - p) / floor.val_images)


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


def _floor_candidate(floor: SelectionFloor, m: Measured, chosen: bool) -> Candidate:
    return Candidate(
        None, floor.predicted_latency_ms, None, m.val_accuracy, chosen, m.measured_latency_ms, m.speedup, m.val_kl
    )


def _measure(
    bench: Workbench,
    pool: list[EpisodeRow],
    distill: DistillConfig,
    reference: Path,
    workdir: Path,
    floor: SelectionFloor | None,
    floor_onnx: Path | None,
) -> tuple[dict[int, Measured], Measured | None]:
    """Each candidate fine-tuned alike and scored on validation; then all of them (and the floor's
    exported model, when there is one) benchmarked on the device in the same rounds, each round
    ending with the FP32 reference. The floor keeps the accuracy it was measured with."""
    paths, scores = [], []
    for row in pool:
        student = fine_tuned(bench, row.policy, distill, f"the policy of episode {row.episode + 1}")
        exported = bench.export(student, row.policy, workdir / f"candidate_{row.controller}_{row.episode}.onnx")
        paths.append(exported.path)
        scores.append(bench.fidelity(student, "val"))
    with_floor = floor is not None and floor_onnx is not None
    if with_floor:
        paths.append(floor_onnx)
    bench.progress.live(f"{len(paths)} candidates: measuring on the device in turn ...", force=True)
    paired = bench.paired_many(paths, reference)
    measured = {
        row.episode: Measured(f.accuracy, f.kl, p.model.record_ms, p.speedup)
        for row, f, p in zip(pool, scores, paired[: len(pool)], strict=True)
    }
    if not with_floor:
        return measured, None
    p = paired[-1]
    return measured, Measured(floor.val_accuracy, floor.val_kl, p.model.record_ms, p.speedup)


def fine_tuned(bench: Workbench, policy: Policy, distill: DistillConfig, what: str) -> nn.Module:
    """`policy` applied to the teacher and fine-tuned by `distill`."""
    student, _ = bench.compress(policy, bench.loaders.train)
    loader = distill_loader(bench.distill_set(distill), bench.config.data.batch_size, bench.config.data.seed)
    bench.progress.live(f"{what}: fine-tuning {distill.epochs} epochs ...", force=True)
    bench.distill(student, distill, loader, bench.progress.fit("selection", lines=False))
    return student


def unpruned_per_layer(space: SearchSpace) -> Policy:
    """Every layer unpruned at its fastest allowed precision by the LUT, layer by layer."""
    n = len(space.layers)
    return space.policy([1.0] * n, [space.allowed_at(t)[0] for t in range(n)])


def fastest_unpruned(bench: Workbench, space: SearchSpace, reference: Path, workdir: Path) -> Policy:
    """The unpruned policy the device runs fastest (the `fastest-within` rule's floor): each layer
    at its fastest allowed precision by the LUT, or every layer at one of those precisions,
    measured side by side when they differ. Per-layer keys miss the conversions between
    precisions: on MobileNetV2 here the per-layer choice (int8 and fp32) ran at 1.2x the FP32
    model, the network all int8 at 1.7x."""
    mixed = unpruned_per_layer(space)
    used = sorted({a.precision for a in mixed.layers.values()}, key=lambda p: p.value)
    if len(used) == 1:
        return mixed
    n = len(space.layers)
    options = [mixed, *(space.policy([1.0] * n, [p] * n) for p in used)]
    paths = [
        bench.export(bench.variant(policy), policy, workdir / f"unpruned_option_{i}.onnx").path
        for i, policy in enumerate(options)
    ]
    bench.progress.live(f"the unpruned network: {len(options)} precision plans measured in turn ...", force=True)
    paired = bench.paired_many(paths, reference)
    return max(zip(options, paired, strict=True), key=lambda option: option[1].speedup)[0]
