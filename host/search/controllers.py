"""Controllers behind one interface: `propose()` an episode's policy, `observe()` its reward.

- `ppo`: the hybrid PPO agent walking the layers (state per layer, previous action included);
- `random`: uniform keep-ratios and precisions, the same budget: a controller has to beat it;
- `uniform`: a small grid of uniform keep-ratios x precisions, in a fixed order.
Each keeps its whole state (networks, optimisers, random generators) in `state_dict()`, so a
killed run resumes with no episode lost or repeated.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from host.compress.policy import Policy
from host.search.ppo import HybridPPO, PPOConfig
from host.search.space import SearchSpace


class Controller:
    name = ""

    def propose(self, episode: int) -> Policy:
        raise NotImplementedError

    def observe(self, reward: float) -> None:
        """The reward of the policy proposed last."""

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


def _squash(space: SearchSpace, u: float) -> float:
    return space.min_keep + (space.max_keep - space.min_keep) / (1.0 + math.exp(-u))


class PPOController(Controller):
    name = "ppo"

    def __init__(self, space: SearchSpace, config: PPOConfig, seed: int) -> None:
        self.space = space
        self.agent = HybridPPO(space.state_dim, len(space.bits), config, seed)

    def propose(self, episode: int) -> Policy:
        keeps: list[float] = []
        bits: list[int] = []
        prev_keep, prev_bits = 1.0, None
        group_keep: dict[str, float] = {}
        for t, (layer, free) in enumerate(zip(self.space.layers, self.space.ratio_free())):
            u, b = self.agent.act(self.space.state(t, prev_keep, prev_bits), free)
            keep = _squash(self.space, u) if free else group_keep.get(layer.group or "", 1.0)
            if layer.group is not None:
                group_keep.setdefault(layer.group, keep)
            keeps.append(keep)
            bits.append(self.space.bits[b])
            prev_keep, prev_bits = keep, self.space.bits[b]
        return self.space.policy(keeps, bits)

    def observe(self, reward: float) -> None:
        self.agent.finish_episode(reward)

    def state_dict(self) -> dict[str, Any]:
        return {"agent": self.agent.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])


class RandomController(Controller):
    name = "random"

    def __init__(self, space: SearchSpace, seed: int) -> None:
        self.space = space
        self.rng = np.random.default_rng(seed)

    def propose(self, episode: int) -> Policy:
        keeps: list[float] = []
        for free in self.space.ratio_free():
            keeps.append(float(self.rng.uniform(self.space.min_keep, self.space.max_keep)) if free else 1.0)
        bits = [int(self.rng.choice(self.space.bits)) for _ in self.space.layers]
        return self.space.policy(keeps, bits)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


class UniformController(Controller):
    """Uniform keep-ratios (max, middle, min of the range) x every precision, cycled."""

    name = "uniform"

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        mid = round((space.min_keep + space.max_keep) / 2, 4)
        ratios = sorted({space.max_keep, mid, space.min_keep}, reverse=True)
        self.grid = list(itertools.product(ratios, sorted(space.bits, reverse=True)))

    def propose(self, episode: int) -> Policy:
        keep, bits = self.grid[episode % len(self.grid)]
        n = len(self.space.layers)
        return self.space.policy([keep] * n, [bits] * n)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


CONTROLLERS = ("ppo", "random", "uniform")


def make_controller(name: str, space: SearchSpace, ppo: PPOConfig, seed: int) -> Controller:
    if name == "ppo":
        return PPOController(space, ppo, seed)
    if name == "random":
        return RandomController(space, seed)
    if name == "uniform":
        return UniformController(space)
    raise ValueError(f"unknown controller {name!r}; choices: {', '.join(CONTROLLERS)}")
