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
from collections import deque
from collections.abc import Callable, Sequence
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
    """Proposes one policy per episode and learns from its reward. Several episodes may be
    proposed before their rewards arrive (a batch evaluated in parallel, host/search/scale.py):
    `observe` and `abandon` then take them oldest first."""

    name = ""

    def __init__(self, space: SearchSpace, constraint: Constraint | None = None) -> None:
        self.space = space
        self.enforcer = Enforcer(space, constraint) if constraint is not None else None
        self.open: deque[tuple[int, Policy]] = deque()  # (episode, policy) proposed, not yet observed

    def propose(self, episode: int) -> Policy:
        policy = self._propose(episode)
        self.open.append((episode, policy))
        return policy

    def _propose(self, episode: int) -> Policy:
        return walk(self.space, self._choose(episode), self.enforcer)

    def _choose(self, episode: int) -> Choose:
        raise NotImplementedError

    def batch_limit(self, start: int, wanted: int) -> int:
        """How many episodes from `start` (at most `wanted`) may be proposed before any of their
        rewards is known."""
        return wanted

    def observe(self, reward: float, result: EpisodeResult | None = None) -> None:
        """The reward of the oldest open episode (and its measured outcome, when known)."""
        episode, policy = self.open.popleft()
        self._observe(episode, policy, reward, result)

    def _observe(self, episode: int, policy: Policy, reward: float, result: EpisodeResult | None) -> None:
        pass

    def abandon(self) -> None:
        """The oldest open episode could not be scored: nothing is learnt from it."""
        episode, _ = self.open.popleft()
        self._abandon(episode)

    def _abandon(self, episode: int) -> None:
        pass

    def episode_notes(self) -> dict[str, Any]:
        """What the controller adds to the last observed episode's line in episodes.jsonl."""
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
    scored by it before proposing the next real policy.

    With `proposals` (a warm start, host/search/allocate.py), those are its first episodes; the
    agent then clones the best of them by reward and samples from there."""

    name = "ppo"

    def __init__(
        self,
        space: SearchSpace,
        config: PPOConfig,
        seed: int,
        constraint: Constraint | None = None,
        surrogate: RewardSurrogate | None = None,
        proposals: Sequence[Policy] = (),
    ) -> None:
        super().__init__(space, constraint)
        self.config = config
        self.agent = HybridPPO(space.state_dim, len(space.precisions), config, seed, speed_features=bool(space.speed))
        self.surrogate = surrogate if config.surrogate_episodes > 0 else None
        self.practised = 0  # surrogate episodes so far
        self.predicted: float | None = None  # the surrogate's reward for the last real policy
        self.proposals = list(proposals)
        self.proposal_rewards: list[float] = []
        self.warm: bool = not self.proposals  # the agent acts (after imitating the best proposal)
        self.notes: dict[str, Any] = {}  # the last observed episode's

    def _propose(self, episode: int) -> Policy:
        """A warm start's proposals first (as the constraint bounds them), then the agent's policies."""
        if episode < len(self.proposals):
            return walk(self.space, _replay(self.space, self.proposals[episode]), self.enforcer)
        return super()._propose(episode)

    def batch_limit(self, start: int, wanted: int) -> int:
        """A batch holds proposals or the agent's episodes, not both: the agent acts only after
        imitating the best proposal."""
        left = len(self.proposals) - start
        return min(wanted, left) if left > 0 else wanted

    def _choose(self, episode: int) -> Choose:
        self.agent.begin_episode()

        def choose(t: int, free: bool, prev_keep: float, prev: Precision | None) -> tuple[float, Precision]:
            u, index = self.agent.act(self.space.state(t, prev_keep, prev), free, self.space.mask(t))
            squashed = self.space.min_keep + (self.space.max_keep - self.space.min_keep) / (1.0 + math.exp(-u))
            return squashed, self.space.precisions[index]

        return choose

    def _observe(self, episode: int, policy: Policy, reward: float, result: EpisodeResult | None) -> None:
        proposal = episode < len(self.proposals)
        if proposal:
            self.proposal_rewards.append(reward)
        else:
            self.agent.finish_episode(reward)
        self.predicted = None
        if self.surrogate is not None and result is not None:
            self._learn(policy, result)
        self._after_proposals()
        # Practice walks act on the agent too: only once no real episode of a batch is open.
        if self.warm and self.surrogate is not None and result is not None and not self.agent.open_episodes:
            self._practise()
        self.notes = {"proposal": proposal}
        if self.surrogate is not None:
            self.notes |= {"surrogate_reward": self.predicted, "surrogate_episodes_so_far": self.practised}

    def _abandon(self, episode: int) -> None:
        if episode < len(self.proposals):
            self.proposal_rewards.append(-math.inf)  # never the best proposal
            self._after_proposals()
        else:
            self.agent.abandon_episode()

    def _after_proposals(self) -> None:
        """Once every proposal is scored: the agent imitates the best one and starts acting."""
        if not self.warm and len(self.proposal_rewards) == len(self.proposals):
            best = max(range(len(self.proposals)), key=self.proposal_rewards.__getitem__)
            self._imitate(self.proposals[best])
            self.warm = True

    def _imitate(self, policy: Policy) -> None:
        """Start the agent from `policy`: its mean keep-ratio and precision at every layer."""
        space, lo, hi = self.space, self.space.min_keep, self.space.max_keep
        states, u, index, free, masks = [], [], [], [], []
        prev_keep, prev = 1.0, None
        for t, (layer, is_free) in enumerate(zip(space.layers, space.ratio_free(), strict=True)):
            action = policy.layers[layer.name]
            states.append(space.state(t, prev_keep, prev))
            fraction = min(max((action.keep_ratio - lo) / (hi - lo), 0.02), 0.98) if hi > lo else 0.5
            u.append(math.log(fraction / (1.0 - fraction)))
            index.append(space.precisions.index(action.precision))
            free.append(is_free)
            masks.append(space.mask(t))
            prev_keep, prev = action.keep_ratio, action.precision
        self.agent.imitate(np.stack(states), np.array(u), np.array(index), np.array(free), np.stack(masks))

    def _learn(self, policy: Policy, result: EpisodeResult) -> None:
        """Refit the surrogate on a real episode (its score of the policy first)."""
        assert self.surrogate is not None
        # The surrogate's score of this policy before it learns the outcome: its honest error.
        self.predicted = self.surrogate.reward(policy) if self.surrogate.fitted else None
        fidelity = self.surrogate.weights.fidelity(result.val_accuracy, result.val_kl)
        self.surrogate.add(policy, fidelity, result.latency_ms)

    def _practise(self) -> None:
        """From the warm-up's last real episode on: episodes scored by the surrogate."""
        assert self.surrogate is not None
        # After a warm start, from the agent's own `surrogate_warmup`-th episode: proposals alike
        # in precision teach the surrogate nothing about precisions, and its guesses would pull the
        # agent away from the best proposal before a real episode of its own.
        if len(self.surrogate.observations) - len(self.proposals) < self.config.surrogate_warmup:
            return
        for _ in range(self.config.surrogate_episodes):
            policy = walk(self.space, self._choose(-1), self.enforcer)
            self.agent.finish_episode(self.surrogate.reward(policy), self.config.surrogate_batch)
            self.practised += 1
        if self.agent.episodes_in_rollout:
            self.agent.update()

    def episode_notes(self) -> dict[str, Any]:
        return self.notes

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "agent": self.agent.state_dict(),
            "practised": self.practised,
            "proposals": [p.to_json() for p in self.proposals],
            "proposal_rewards": self.proposal_rewards,
            "warm": self.warm,
        }
        if self.surrogate is not None:
            state["surrogate"] = self.surrogate.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.practised = state.get("practised", 0)
        if "proposals" in state:  # the run's own proposals, even if the LUT has changed since
            self.proposals = [Policy.from_json(p) for p in state["proposals"]]
            self.proposal_rewards = list(state["proposal_rewards"])
            self.warm = state["warm"]
        if self.surrogate is not None and "surrogate" in state:
            self.surrogate.load_state_dict(state["surrogate"])


def _replay(space: SearchSpace, policy: Policy) -> Choose:
    """A `Choose` that takes `policy`'s action at every layer."""
    actions = [policy.layers[layer.name] for layer in space.layers]
    return lambda t, free, prev_keep, prev: (actions[t].keep_ratio, actions[t].precision)


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
