"""Which of a controller's episodes becomes its final model.

An episode's accuracy comes from a one-epoch fine-tune of a few hundred images: on ResNet18 the
same policy scored 0.88 and 0.85 in two episodes, and policies whose episodes read 0.65 and 0.94
both reached 0.94 after three epochs. So the best single episode is mostly the luckiest one.
With `top` > 1, the controller's best `top` distinct policies (by episode reward) are fine-tuned
again, all alike (`epochs` on the whole training split), and the choice is made at that fidelity:

- `reward`: the best reward recomputed with that accuracy;
- `fastest-within`: the lowest predicted latency among the candidates whose accuracy is within
  `max_accuracy_drop` of the unpruned network's at the same fidelity (each layer at its fastest
  allowed precision; the search measures it once): the objective "fastest model that keeps the
  teacher's accuracy", judged among equals.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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

    def __post_init__(self) -> None:
        if self.top < 1 or self.epochs < 1:
            raise ValueError(f"top = {self.top} and epochs = {self.epochs} must be at least 1")
        if self.rule not in RULES:
            raise ValueError(f"rule {self.rule!r}; choose among {', '.join(RULES)}")
        if not 0.0 <= self.max_accuracy_drop < 1.0:
            raise ValueError(f"max_accuracy_drop = {self.max_accuracy_drop}: give a fraction, e.g. 0.005")


def candidates(rows: list[EpisodeRow], top: int) -> list[EpisodeRow]:
    """The `top` best episodes by reward, one per distinct policy (the first time it was seen)."""
    best: dict[str, EpisodeRow] = {}
    for row in sorted(rows, key=lambda r: (-r.reward, r.episode)):
        best.setdefault(row.policy.to_json(), row)
    return list(best.values())[:top]


def select(
    bench: Workbench,
    rows: list[EpisodeRow],
    config: SelectConfig,
    distill: DistillConfig,
    score: RewardConfig,
    reference: RewardReference,
    floor_accuracy: float | None = None,
) -> tuple[EpisodeRow, tuple[Candidate, ...]]:
    """The episode whose policy becomes the final model, and the candidates it was chosen from.
    `fastest-within` measures the drop from `floor_accuracy` (the unpruned network at the same
    fidelity), else from the most accurate candidate; when no candidate is within it, the most
    accurate one is chosen."""
    pool = candidates(rows, config.top)
    if len(pool) == 1:
        return pool[0], ()
    fidelity = replace(distill, epochs=config.epochs)
    accuracy = {
        row.episode: fine_tuned_accuracy(bench, row.policy, fidelity, f"the policy of episode {row.episode + 1}")
        for row in pool
    }
    if config.rule == "reward":
        chosen = max(
            pool,
            key=lambda r: reward(
                accuracy[r.episode],
                r.predicted_latency_ms,
                r.size_bytes,
                reference.latency_ms,
                reference.size_bytes,
                score,
            ),
        )
    else:
        floor = (max(accuracy.values()) if floor_accuracy is None else floor_accuracy) - config.max_accuracy_drop
        within = [r for r in pool if accuracy[r.episode] >= floor]
        chosen = (
            min(within, key=lambda r: r.predicted_latency_ms)
            if within
            else max(pool, key=lambda r: accuracy[r.episode])
        )
    return chosen, tuple(
        Candidate(r.episode, r.predicted_latency_ms, r.val_accuracy, accuracy[r.episode], r is chosen) for r in pool
    )


def fine_tuned_accuracy(bench: Workbench, policy: Policy, distill: DistillConfig, what: str) -> float:
    """Validation accuracy of `policy` applied to the teacher and fine-tuned by `distill`."""
    student, _ = bench.compress(policy, bench.loaders.train)
    loader = distill_loader(bench.distill_set(distill), bench.config.data.batch_size, bench.config.data.seed)
    bench.progress.live(f"{what}: fine-tuning {distill.epochs} epochs ...", force=True)
    bench.distill(student, distill, loader, bench.progress.fit("selection", lines=False))
    return bench.accuracy(student, "val")


def unpruned_fastest(space: SearchSpace) -> Policy:
    """Every layer unpruned at its fastest allowed precision: what the device runs of the teacher
    without pruning (the `fastest-within` rule's reference)."""
    n = len(space.layers)
    return space.policy([1.0] * n, [space.allowed_at(t)[0] for t in range(n)])
