"""HiReLC's two tiers as gymnasium environments, and the ensembles of Stable-Baselines3 PPO and A2C
policies that learn them (Secs. 3.1.3 and 3.4).

- `BlockEnv` (a low-level agent's): one block, an action of four indices per kernel (bit level,
  keep level, type, granularity) decoded within the block's `LayerBudget`; observation and reward
  as in the paper (Eq. 9, with the LUT latency as a third objective), 20 steps an episode.
- `BudgetEnv` (a high-level agent's): a tier and a strategy per block, decoded to budgets with the
  sensitivity-aware correction; reward Eq. (11)-(12) with the previous cycle's feedback.
- `Ensemble`: members with heterogeneous reward weights (conservative, moderate, aggressive),
  trained a given number of timesteps per cycle, combined by the vote of Eq. (16) with uniform,
  fixed or confidence (Eq. 17) weights.

Each member learns inside `seeded(...)`, which fixes and then restores the global random state SB3
draws from, so a cycle's outcome depends only on the seed, the cycle and the members' weights: a
resumed search repeats it exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm

from host.search.hirelc import equations as eq

MEMBERS = ("ppo", "a2c")
# A member's reward weights by style: LLA (alpha, beta, gamma, delta) of Eq. (9), HLA (w1..w4) of Eq. (11).
LLA_STYLES = {
    "conservative": (1.5, 0.5, 1.0, 0.1),
    "moderate": (1.0, 1.0, 1.0, 0.1),
    "aggressive": (0.5, 1.5, 1.0, 0.1),
}
HLA_STYLES = {
    "conservative": (1.0, 1.5, 1.0, 1.5),
    "moderate": (1.0, 1.0, 1.0, 1.0),
    "aggressive": (0.5, 0.5, 1.5, 0.5),
}


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Python's, NumPy's and torch's global generators seeded with `seed`, restored on exit."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


@dataclass(frozen=True)
class LayerBudget:
    """What the high-level agents give one block: a target retained-size fraction, the bit and
    keep-ratio bounds its kernels' actions are decoded within, its allowed drop and the strategy."""

    target: float
    bits: tuple[float, float]
    keep: tuple[float, float]
    allowed_drop: float
    strategy: str


@dataclass(frozen=True)
class BlockOutcome:
    """One candidate configuration of a block, as the low-level reward sees it."""

    fraction: float  # the block's retained-size fraction (Eq. 21, parameter-weighted)
    kernel_fractions: tuple[float, ...]
    drop: float  # the estimated accuracy drop (proxy or surrogate)
    latency_gain: float  # 1 - L / L_base of the model with this candidate, from the LUT


@dataclass
class BlockTask:
    """A low-level agent's block in one cycle: its place, sensitivity, budget and how to score a
    candidate (`score` maps an action vector to its outcome)."""

    index: int
    blocks: int
    kernels: int
    sensitivity: float
    budget: LayerBudget
    strategy_code: float
    surrogate: bool
    score: Callable[[Sequence[int]], BlockOutcome]

    def observation(self, fraction: float, drop: float, reward: float, kernel_fractions: Sequence[float]) -> np.ndarray:
        """The paper's 12 entries and one occupancy per kernel (its retained fraction)."""
        b = self.budget
        return np.array(
            [
                self.index / max(self.blocks - 1, 1),
                self.sensitivity,
                fraction,
                fraction - b.target,
                drop / b.allowed_drop,
                1.0,  # curriculum stage: fixed
                b.target,
                self.strategy_code,
                b.allowed_drop,
                1.0,  # bias
                float(self.surrogate),
                reward,
                *kernel_fractions,
            ],
            dtype=np.float32,
        )


class BlockEnv(gym.Env):
    """A low-level agent's environment over `task` (replaced each cycle), rewarded with one member's
    `weights`; `latency_weight` scales the LUT latency term (0: the paper's reward)."""

    def __init__(
        self, task: BlockTask, levels: Sequence[int], weights: tuple[float, ...], latency_weight: float, steps: int
    ) -> None:
        self.task = task
        self.weights = weights
        self.latency_weight = latency_weight
        self.steps = steps
        self.observation_space = spaces.Box(-np.inf, np.inf, (12 + task.kernels,), np.float32)
        self.action_space = spaces.MultiDiscrete(list(levels) * task.kernels)
        self.history: list[float] = []
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.history, self.t = [], 0
        return self.task.observation(1.0, 0.0, 0.0, [1.0] * self.task.kernels), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        task, out = self.task, self.task.score([int(a) for a in action])
        step = eq.BlockStep(
            out.drop, task.budget.allowed_drop, out.fraction, task.budget.target, task.sensitivity, out.latency_gain
        )
        reward = eq.lla_reward(self.weights, step, self.history, self.latency_weight)
        self.history.append(reward)
        self.t += 1
        obs = task.observation(out.fraction, out.drop, reward, out.kernel_fractions)
        return obs, reward, False, self.t >= self.steps, {}


@dataclass
class Feedback:
    """The high-level agents' view of the previous cycle (the first: no drop, nothing compressed)."""

    drop: float = 0.0
    fraction: float = 1.0
    progress: float = 0.0


class BudgetEnv(gym.Env):
    """A high-level agent's environment: each step proposes every block's tier and strategy;
    `decode` turns an action into the blocks' targets."""

    def __init__(
        self,
        sensitivities: Sequence[float],
        params: Sequence[int],
        global_target: float,
        allowed_drop: float,
        feedback: Feedback,
        decode: Callable[[Sequence[int]], list[LayerBudget]],
        weights: tuple[float, float, float, float],
        steps: int,
    ) -> None:
        self.sensitivities = list(sensitivities)
        self.params = list(params)
        self.global_target = global_target
        self.allowed_drop = allowed_drop
        self.feedback = feedback
        self.decode = decode
        self.weights = weights
        self.steps = steps
        n = len(self.sensitivities)
        self.observation_space = spaces.Box(-np.inf, np.inf, (5 + 2 * n,), np.float32)
        self.action_space = spaces.MultiDiscrete([len(eq.TIER_TARGETS), len(eq.STRATEGIES)] * n)
        self.targets = [global_target] * n
        self.t = 0

    def _observation(self, head: tuple[float, float]) -> np.ndarray:
        f = self.feedback
        blocks = [v for s, rho in zip(self.sensitivities, self.targets, strict=True) for v in (s, rho)]
        return np.array([f.drop, f.fraction, f.progress, *head, *blocks], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.targets, self.t = [self.global_target] * len(self.sensitivities), 0
        return self._observation((self.global_target, self.allowed_drop)), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.targets = [b.target for b in self.decode([int(a) for a in action])]
        f = self.feedback
        reward = eq.hla_reward(
            self.sensitivities,
            self.targets,
            self.params,
            self.global_target,
            f.fraction,
            f.drop,
            self.allowed_drop,
            self.weights,
        )
        self.t += 1
        gap = eq.weighted_fraction(self.params, self.targets) - self.global_target
        return self._observation((gap, math.tanh(reward))), reward, False, self.t >= self.steps, {}


def _member(kind: str, env: gym.Env, steps: int, seed: int) -> BaseAlgorithm:
    """An SB3 learner: PPO with one rollout per episode, or A2C with its 5-step updates; both clip
    gradient norms at SB3's 0.5."""
    kwargs: dict[str, Any] = {"seed": seed, "device": "cpu", "verbose": 0, "policy_kwargs": {"net_arch": [64, 64]}}
    if kind == "ppo":
        return PPO("MlpPolicy", env, n_steps=steps, batch_size=steps, n_epochs=4, **kwargs)
    if kind == "a2c":
        return A2C("MlpPolicy", env, n_steps=5, **kwargs)
    raise ValueError(f"unknown ensemble member {kind!r}; choose among {', '.join(MEMBERS)}")


class Ensemble:
    """Members of `kinds` (ppo, a2c), each on its own env from `make_env(style weights)`."""

    def __init__(
        self,
        kinds: Sequence[str],
        styles: Sequence[str],
        style_weights: dict[str, tuple[float, ...]],
        make_env: Callable[[tuple[float, ...]], gym.Env],
        steps: int,
        seed: int,
    ) -> None:
        if not kinds or len(kinds) != len(styles):
            raise ValueError(
                f"an ensemble needs at least one member and one style per member: {list(kinds)} with {list(styles)}"
            )
        unknown = [s for s in styles if s not in style_weights]
        if unknown:
            raise ValueError(f"unknown ensemble styles {unknown}; choose among {', '.join(style_weights)}")
        self.seed = seed
        self.envs = [make_env(style_weights[s]) for s in styles]
        with seeded(seed):
            self.members = [
                _member(k, env, steps, seed + i) for i, (k, env) in enumerate(zip(kinds, self.envs, strict=True))
            ]
        self.recent: list[list[float]] = [[] for _ in kinds]  # each member's last rewards (Eq. 17)

    def learn(self, timesteps: int, cycle: int) -> None:
        """Each member trains `timesteps` more steps on its env (a fresh rollout each cycle)."""
        if timesteps <= 0:
            return
        for i, (member, env) in enumerate(zip(self.members, self.envs, strict=True)):
            with seeded(self.seed + 7919 * (cycle + 1) + 104729 * i):
                member.learn(total_timesteps=timesteps, reset_num_timesteps=True)
            history = getattr(env, "history", [])
            self.recent[i] = list(history[-eq.STABILITY_WINDOW :])

    def actions(self, observation: np.ndarray, deterministic: bool, cycle: int, draw: int = 0) -> list[list[int]]:
        """Each member's action for `observation` (stochastic ones seeded by cycle and `draw`)."""
        out = []
        for i, member in enumerate(self.members):
            with seeded(self.seed + 31 * (cycle + 1) + i + 7919 * draw):
                action, _ = member.predict(observation, deterministic=deterministic)
            out.append([int(a) for a in np.asarray(action).ravel()])
        return out

    def weights(self, rule: str, fixed: Sequence[float], temperature: float) -> list[float]:
        """The vote's weights: uniform, `fixed`, or confidence (Eq. 17) from recent rewards."""
        if rule == "confidence":
            means = [float(np.mean(r)) if r else 0.0 for r in self.recent]
            return eq.confidence_weights(means, temperature)
        if rule == "fixed":
            return list(fixed)
        return [1.0 / len(self.members)] * len(self.members)

    def state_dict(self) -> dict[str, Any]:
        return {
            "members": [
                {"policy": m.policy.state_dict(), "optimizer": m.policy.optimizer.state_dict()} for m in self.members
            ],
            "recent": [list(r) for r in self.recent],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for member, saved in zip(self.members, state["members"], strict=True):
            member.policy.load_state_dict(saved["policy"])
            member.policy.optimizer.load_state_dict(saved["optimizer"])
        self.recent = [list(r) for r in state["recent"]]
