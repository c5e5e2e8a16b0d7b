"""The episode loop: propose a policy, evaluate it, reward it, let the controller learn.

Free of I/O: scoring a policy (`evaluate`) and recording an episode (`on_episode`: write a line,
checkpoint the controller, show progress) are injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from host.compress.policy import Policy
from host.search.controllers import Controller
from host.search.evaluate import EpisodeResult
from host.search.reward import RewardConfig, reward


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


def run_episodes(
    controller: Controller,
    evaluate: Callable[[Policy, int], EpisodeResult],
    episodes: int,
    baseline: RewardReference,
    weights: RewardConfig,
    start_episode: int = 0,
    on_episode: Callable[[Episode], None] | None = None,
) -> list[Episode]:
    """Episodes `start_episode` .. `episodes - 1` of a budget of `episodes` (a resumed run passes
    the number already done as `start_episode`); `on_episode` runs after the controller has
    observed each one, so a checkpoint taken there holds it."""
    if episodes <= 0:
        raise ValueError(f"episodes = {episodes}: a search needs a budget of at least one episode")
    if not 0 <= start_episode <= episodes:
        raise ValueError(f"start_episode = {start_episode} is outside the budget 0..{episodes}")
    done = []
    for index in range(start_episode, episodes):
        t0 = time.monotonic()
        policy = controller.propose(index)
        result = evaluate(policy, index)
        r = reward(
            weights.fidelity(result.val_accuracy, result.val_kl),
            result.latency_ms,
            result.size_bytes,
            baseline.latency_ms,
            baseline.size_bytes,
            weights,
        )
        controller.observe(r, result)
        episode = Episode(index, policy, result, r, time.monotonic() - t0)
        done.append(episode)
        if on_episode is not None:
            on_episode(episode)
    return done
