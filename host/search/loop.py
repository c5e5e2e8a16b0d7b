"""The episode loop: propose a batch of policies, score them, reward them, let the controller learn.

Free of I/O: scoring a batch (`score`, host/search/scale.py) and recording episodes (write a
line, checkpoint the controller after each batch, show progress) are injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from host.compress.policy import Policy
from host.search.controllers import Controller
from host.search.evaluate import EpisodeResult, Unscored
from host.search.reward import RewardConfig, reward

# Scores a batch of (episode, policy), in that order.
Scorer = Callable[[Sequence[tuple[int, Policy]]], list[EpisodeResult | Unscored]]


@dataclass(frozen=True)
class RewardReference:
    """The uncompressed model's figures the reward compares with."""

    latency_ms: float
    size_bytes: int


@dataclass(frozen=True)
class Episode:
    index: int
    policy: Policy
    result: EpisodeResult
    reward: float
    wall_s: float


@dataclass(frozen=True)
class Failed:
    """An episode whose evaluation failed: recorded, not learnt from."""

    index: int
    policy: Policy
    reason: str


@dataclass(frozen=True)
class Recorder:
    """What the loop reports: each episode (after the controller has observed it), each failed
    one, and the end of each batch (a checkpoint taken there accounts for `episodes_done`)."""

    episode: Callable[[Episode], None] = lambda episode: None
    failed: Callable[[Failed], None] = lambda failed: None
    batch_done: Callable[[int], None] = lambda episodes_done: None


def one_by_one(evaluate: Callable[[Policy, int], EpisodeResult]) -> Scorer:
    """A batch scorer that evaluates `evaluate(policy, episode)` episode after episode."""
    return lambda batch: [evaluate(policy, index) for index, policy in batch]


def run_episodes(
    controller: Controller,
    score: Scorer,
    episodes: int,
    baseline: RewardReference,
    weights: RewardConfig,
    start_episode: int = 0,
    record: Recorder | None = None,
    parallel: int = 1,
) -> list[Episode]:
    """Episodes `start_episode` .. `episodes - 1` of a budget of `episodes` (a resumed run passes
    the number already done as `start_episode`), in batches of up to `parallel`: the controller
    proposes a batch, `score` evaluates it (concurrently, if it can), and the controller observes
    the results in episode order, so a run's record is the same for a given seed and batch size."""
    if episodes <= 0:
        raise ValueError(f"episodes = {episodes}: a search needs a budget of at least one episode")
    if not 0 <= start_episode <= episodes:
        raise ValueError(f"start_episode = {start_episode} is outside the budget 0..{episodes}")
    if not 1 <= parallel <= episodes:
        raise ValueError(f"parallel_episodes = {parallel}: give 1 .. the episode budget {episodes}")
    record = record or Recorder()
    done = []
    index = start_episode
    while index < episodes:
        t0 = time.monotonic()
        size = controller.batch_limit(index, min(parallel, episodes - index))
        batch = [(i, controller.propose(i)) for i in range(index, index + size)]
        outcomes = score(batch)
        wall_s = (time.monotonic() - t0) / size  # the batch's wall time, shared by its episodes
        for (i, policy), result in zip(batch, outcomes, strict=True):
            if isinstance(result, Unscored):
                controller.abandon()
                record.failed(Failed(i, policy, result.reason))
                continue
            r = reward(
                weights.fidelity(result.val_accuracy, result.val_kl),
                result.latency_ms,
                result.size_bytes,
                baseline.latency_ms,
                baseline.size_bytes,
                weights,
            )
            controller.observe(r, result)
            episode = Episode(i, policy, result, r, wall_s)
            done.append(episode)
            record.episode(episode)
        index += size
        record.batch_done(index)
    return done
