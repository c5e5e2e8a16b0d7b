"""Controllers behind one interface: `propose()` an episode's policy, `observe()` its reward.

- `ppo`: the hybrid PPO agent walking the layers (state per layer, previous action included);
- `random`: uniform keep-ratios and precisions, the same budget: a controller has to beat it;
- `uniform`: a small grid of uniform keep-ratios x precisions, in a fixed order.
The papers' baselines (`amc`, `haq`, `dqn`) build on this interface (`host.search.baselines`);
`host.search.registry` makes any controller by name. Each keeps its whole state (networks,
optimisers, random generators) in `state_dict()`, so a killed run resumes with no episode lost
or repeated.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from host.compress.policy import Policy
from host.search.ppo import HybridPPO, PPOConfig
from host.search.reward import Constraint, Enforcer
from host.search.space import SearchSpace
from lut_store.precision import Precision

if TYPE_CHECKING:
    from host.search.evaluate import EpisodeResult
    from host.search.surrogate import RewardSurrogate

# One step's choice: (layer index, decides its ratio, previous keep-ratio, previous precision) -> (keep, precision)
Choose = Callable[[int, bool, float, Precision | None], tuple[float, Precision]]


def walk(space: SearchSpace, choose: Choose, enforcer: Enforcer | None) -> Policy:
    """One episode: layer by layer, the controller's choice, bounded by the constraint (if any);
    followers of a residual group take the group's ratio, the classifier keeps its width, and a
    precision the LUT ruled out at a layer becomes that layer's fastest allowed one."""
    keeps: list[float] = []
    precisions: list[Precision] = []
    prev_keep: float = 1.0
    prev_precision: Precision | None = None
    group_keep: dict[str, float] = {}
    for t, (layer, free) in enumerate(zip(space.layers, space.ratio_free(), strict=True)):
        keep, precision = choose(t, free, prev_keep, prev_precision)
        precision = space.legal(t, precision)
        if not free:
            keep = group_keep[layer.group] if layer.group is not None else 1.0
        if enforcer is not None:
            keep, precision = enforcer.bound(keeps, precisions, keep, precision, free)
        if layer.group is not None:
            group_keep.setdefault(layer.group, keep)
        keeps.append(keep)
        precisions.append(precision)
        prev_keep, prev_precision = keep, precision
    return space.policy(keeps, precisions)


class Controller:
    """Proposes one policy per episode and learns from its reward."""

    name = ""

    def __init__(self, space: SearchSpace, constraint: Constraint | None = None) -> None:
        self.space = space
        self.enforcer = Enforcer(space, constraint) if constraint is not None else None

    def propose(self, episode: int) -> Policy:
        self.last_policy = walk(self.space, self._choose(episode), self.enforcer)
        return self.last_policy

    def _choose(self, episode: int) -> Choose:
        raise NotImplementedError

    def observe(self, reward: float, result: EpisodeResult | None = None) -> None:
        """The reward of the policy proposed last (and its measured outcome, when known)."""

    def episode_notes(self) -> dict[str, Any]:
        """What the controller adds to the last episode's line in episodes.jsonl."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PPOController(Controller):
    """The PPO agent acts on each layer's state. A bound the constraint puts on an action is
    part of the environment: the agent learns from the action it sampled (as SB3 does with
    clipped actions), the state's previous action is the one executed.

    With a `surrogate`, each real episode's outcome refits it and (from the config's
    `surrogate_warmup`-th real episode on) the agent practises `surrogate_episodes` episodes
    scored by it before proposing the next real policy."""

    name = "ppo"

    def __init__(
        self,
        space: SearchSpace,
        config: PPOConfig,
        seed: int,
        constraint: Constraint | None = None,
        surrogate: RewardSurrogate | None = None,
    ) -> None:
        super().__init__(space, constraint)
        self.config = config
        self.agent = HybridPPO(space.state_dim, len(space.precisions), config, seed, speed_features=bool(space.speed))
        self.surrogate = surrogate if config.surrogate_episodes > 0 else None
        self.practised = 0  # surrogate episodes so far
        self.predicted: float | None = None  # the surrogate's reward for the last real policy

    def _choose(self, episode: int) -> Choose:
        def choose(t: int, free: bool, prev_keep: float, prev: Precision | None) -> tuple[float, Precision]:
            u, index = self.agent.act(self.space.state(t, prev_keep, prev), free, self.space.mask(t))
            squashed = self.space.min_keep + (self.space.max_keep - self.space.min_keep) / (1.0 + math.exp(-u))
            return squashed, self.space.precisions[index]

        return choose

    def observe(self, reward: float, result: EpisodeResult | None = None) -> None:
        self.agent.finish_episode(reward)
        self.predicted = None
        if self.surrogate is None or result is None:
            return
        # The surrogate's score of this policy before it learns the outcome: its honest error.
        self.predicted = self.surrogate.reward(self.last_policy) if self.surrogate.fitted else None
        fidelity = self.surrogate.weights.fidelity(result.val_accuracy, result.val_kl)
        self.surrogate.add(self.last_policy, fidelity, result.latency_ms)
        if len(self.surrogate.observations) < self.config.surrogate_warmup:
            return
        for _ in range(self.config.surrogate_episodes):
            policy = walk(self.space, self._choose(-1), self.enforcer)
            self.agent.finish_episode(self.surrogate.reward(policy), self.config.surrogate_batch)
            self.practised += 1
        if self.agent.episodes_in_rollout:
            self.agent.update()

    def episode_notes(self) -> dict[str, Any]:
        if self.surrogate is None:
            return {}
        return {"surrogate_reward": self.predicted, "surrogate_episodes_so_far": self.practised}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"agent": self.agent.state_dict(), "practised": self.practised}
        if self.surrogate is not None:
            state["surrogate"] = self.surrogate.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.practised = state.get("practised", 0)
        if self.surrogate is not None and "surrogate" in state:
            self.surrogate.load_state_dict(state["surrogate"])


class RandomController(Controller):
    """Keep-ratios uniform in the range, precisions uniform among the allowed ones."""

    name = "random"

    def __init__(self, space: SearchSpace, seed: int, constraint: Constraint | None = None) -> None:
        super().__init__(space, constraint)
        self.rng = np.random.default_rng(seed)

    def _choose(self, episode: int) -> Choose:
        def choose(t: int, free: bool, prev_keep: float, prev: Precision | None) -> tuple[float, Precision]:
            keep = float(self.rng.uniform(self.space.min_keep, self.space.max_keep)) if free else 1.0
            allowed = self.space.allowed_at(t)
            return keep, allowed[int(self.rng.choice(len(allowed)))]

        return choose

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


class UniformController(Controller):
    """Uniform keep-ratios (max, middle, min of the range) x every precision some layer may take
    (widest first), cycled in that fixed order: episode k takes grid entry k mod its size."""

    name = "uniform"

    def __init__(self, space: SearchSpace, constraint: Constraint | None = None) -> None:
        super().__init__(space, constraint)
        mid = round((space.min_keep + space.max_keep) / 2, 4)
        ratios = sorted({space.max_keep, mid, space.min_keep}, reverse=True)
        used = [p for p in space.precisions if any(p in space.allowed_at(t) for t in range(len(space.layers)))]
        widest_first = sorted(used, key=lambda p: p.weight_bits, reverse=True)
        self.grid = list(itertools.product(ratios, widest_first))

    def _choose(self, episode: int) -> Choose:
        keep, precision = self.grid[episode % len(self.grid)]
        return lambda t, free, prev_keep, prev: (keep, precision)
