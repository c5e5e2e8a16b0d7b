"""The papers' baseline controllers, on Stable-Baselines3's DDPG and DQN:

- `amc`: AMC's DDPG over per-layer keep-ratios, every layer FP32, under a target (He et al. 2018,
  https://arxiv.org/abs/1802.03494; https://github.com/mit-han-lab/amc);
- `haq`: HAQ's DDPG over per-layer precision, no pruning, under a latency budget (Wang et al. 2019,
  https://arxiv.org/abs/1811.08886; https://github.com/mit-han-lab/haq);
- `dqn`: DQN over a joint action, keep-ratio bins x precisions (the PPO-vs-DQN comparison).

SB3's `learn()` drives an environment, but the episode loop pulls a controller (`propose` /
`observe`). So each controller owns an SB3 model built on a gymnasium env that only describes one
layer step's spaces (`_LayerStep`, never stepped) and uses its parts directly: `predict` for the
greedy action, its replay buffer (`add`) for the transitions, and `train(gradient_steps, batch)`
after every episode past the warm-up. SB3's logger is set to record nothing.

Transitions follow AMC's and HAQ's code (`amc_search.py`, `rl_quantize.py`): every step of an
episode is stored with the episode's final reward, training subtracts a moving-average baseline
from each sampled batch (`b <- b + alpha * (batch mean - b)`), and gamma is 1 ("to avoid
over-prioritizing short-term rewards", AMC): a step's target is r - b + Q'(s', a') until the
episode's last. The DQN is trained the same way, so the comparison varies only the learner. As
in those repos (and as PPOController does), the agent learns from the action it chose; a bound
the constraint puts on it is part of the environment.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import DDPG, DQN
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import polyak_update, update_learning_rate
from stable_baselines3.common.vec_env import VecNormalize

from host.compress.policy import Policy
from host.search.controllers import Choose, Controller, walk
from host.search.ppo import check_counts
from host.search.reward import Constraint
from host.search.space import SearchSpace
from lut_store.precision import Precision

if TYPE_CHECKING:
    from host.search.evaluate import EpisodeResult


@dataclass(frozen=True)
class DDPGConfig:
    """AMC's DDPG settings (HAQ's differ in a replay memory of 128 episodes and noise decay
    0.99): actor and critic 300 x 300, learning rates 1e-4 / 1e-3, tau 0.01, batch 64, replay memory of 100 episodes,
    truncated-normal exploration with sigma 0.5 decaying per episode, baseline alpha 0.5, gamma
    1, one gradient step per stored transition. AMC warms up with 100 random episodes of 800,
    HAQ with 20 of 600; the default here suits budgets of tens of episodes."""

    warmup_episodes: int = 5
    hidden: int = 300
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    tau: float = 0.01
    batch_size: int = 64
    buffer_episodes: int = 100
    init_noise: float = 0.5
    noise_decay: float = 0.95
    baseline_alpha: float = 0.5
    gamma: float = 1.0
    updates_per_step: int = 1

    def __post_init__(self) -> None:
        check_counts(self, warmup_episodes=0, hidden=1, batch_size=1, buffer_episodes=1, updates_per_step=1)


@dataclass(frozen=True)
class DQNConfig:
    """A DQN over `keep_bins` evenly spaced keep-ratios (the range's ends included) x every
    precision; epsilon-greedy, epsilon falling linearly from 1 to `final_epsilon` over
    `explore_episodes` after the random warm-up; the target network takes `target_tau` of the
    online one after every episode's update (1: a copy). Other settings as SB3's DQN."""

    keep_bins: int = 4
    warmup_episodes: int = 5
    explore_episodes: int = 20
    final_epsilon: float = 0.05
    hidden: int = 64
    lr: float = 1e-3
    batch_size: int = 64
    buffer_episodes: int = 100
    target_tau: float = 1.0
    baseline_alpha: float = 0.5
    gamma: float = 1.0
    updates_per_step: int = 1

    def __post_init__(self) -> None:
        if self.keep_bins < 2:
            raise ValueError(
                f"keep_bins = {self.keep_bins}: the DQN needs at least 2 keep-ratio bins "
                "(the ends of the keep-ratio range)"
            )
        check_counts(
            self, warmup_episodes=0, explore_episodes=1, hidden=1, batch_size=1, buffer_episodes=1, updates_per_step=1
        )


class _LayerStep(gym.Env):
    """The spaces of one layer step, from which SB3 sizes its networks and replay buffer. The
    controller walks the layers itself, so this env is never reset or stepped by SB3."""

    def __init__(self, state_dim: int, action_space: spaces.Space) -> None:
        self.observation_space = spaces.Box(0.0, 1.0, (state_dim,), np.float32)
        self.action_space = action_space


_BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


class BaselineReplayBuffer(ReplayBuffer):
    """SB3's replay buffer, sampled with its own generator (so a resumed run draws the same
    batches) and returning rewards less AMC's moving-average baseline of the sampled batches."""

    def __init__(self, *args: Any, baseline_alpha: float, seed: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.baseline_alpha = baseline_alpha
        self.baseline: float | None = None
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        batch = self._get_samples(self.rng.integers(0, self.size(), size=batch_size), env=env)
        mean = float(batch.rewards.mean())
        self.baseline = mean if self.baseline is None else self.baseline + self.baseline_alpha * (mean - self.baseline)
        return batch._replace(rewards=batch.rewards - self.baseline)

    def state_dict(self) -> dict[str, Any]:
        n = self.size()
        return {
            **{k: torch.from_numpy(getattr(self, k)[:n].copy()) for k in _BUFFER_ARRAYS},
            "pos": self.pos,
            "full": self.full,
            "baseline": self.baseline,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = len(state["rewards"])
        # A full buffer must be this size: a larger one would count never-written rows as sampled.
        if (
            n > self.buffer_size
            or (state["full"] and n != self.buffer_size)
            or state["observations"].shape[1:] != self.observations.shape[1:]
        ):
            raise ValueError(
                f"the checkpoint's replay buffer ({n} transitions of shape "
                f"{tuple(state['observations'].shape[1:])}) does not fit this controller's "
                f"({self.buffer_size} of {self.observations.shape[1:]}): resume with the "
                "configuration the run was started with"
            )
        for k in _BUFFER_ARRAYS:
            getattr(self, k)[:n] = state[k].numpy()
        self.pos, self.full, self.baseline = state["pos"], state["full"], state["baseline"]
        self.rng.bit_generator.state = state["rng"]


class _TwoRateDDPG(DDPG):
    """SB3's DDPG with AMC's separate actor and critic learning rates: SB3's `train()` would set
    its one scheduled rate on both optimisers."""

    def _update_learning_rate(self, optimizers: Any) -> None:
        """Constant rates, set once when the controller builds the model."""


def _built(cls: type[OffPolicyAlgorithm], env: _LayerStep, seed: int, **kwargs: Any) -> Any:
    """An SB3 model with seeded initial weights (the global generators untouched) and a logger
    that records nothing."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls("MlpPolicy", env, device="cpu", replay_buffer_class=BaselineReplayBuffer, **kwargs)
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


class _StepLearner(Controller):
    """What the baselines share: one step per deciding layer, each episode's transitions stored
    when its reward arrives, `train()` after each episode past the warm-up, every piece of state
    (networks, optimisers, replay buffer, generators, counters) in `state_dict()`."""

    def __init__(
        self,
        space: SearchSpace,
        constraint: Constraint | None,
        model: OffPolicyAlgorithm,
        warmup_episodes: int,
        updates_per_step: int,
        batch_size: int,
        seed: int,
    ) -> None:
        super().__init__(space, constraint)
        self.model = model
        self.warmup_episodes = warmup_episodes
        self.updates_per_step = updates_per_step
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.episodes_done = 0
        # Each open episode's (state, action as stored) steps, oldest first (host/search/controllers.py).
        self.steps: deque[list[tuple[np.ndarray, np.ndarray]]] = deque()

    @property
    def warming_up(self) -> bool:
        return self.episodes_done < self.warmup_episodes

    def _decides(self, free: bool) -> bool:
        """Whether a layer is a step of the agent's episode (one whose keep-ratio is not free
        still picks a precision)."""
        return True

    def _act(self, state: np.ndarray) -> tuple[np.ndarray, float, Precision]:
        """(the action as the replay buffer stores it, keep-ratio, precision) for one step."""
        raise NotImplementedError

    def _choose(self, episode: int) -> Choose:
        steps: list[tuple[np.ndarray, np.ndarray]] = []
        self.steps.append(steps)

        def choose(t: int, free: bool, prev_keep: float, prev: Precision | None) -> tuple[float, Precision]:
            if not self._decides(free):
                return 1.0, Precision.FP32
            state = self.space.state(t, prev_keep, prev)
            stored, keep, precision = self._act(state)
            steps.append((state, stored))
            return keep, precision

        return choose

    def _observe(self, episode: int, policy: Policy, reward: float, result: EpisodeResult | None) -> None:
        steps = self.steps.popleft()
        buffer = self.model.replay_buffer
        for i, (state, action) in enumerate(steps):
            last = i == len(steps) - 1
            following = state if last else steps[i + 1][0]  # AMC: the last state is its own successor
            buffer.add(state[None], following[None], action[None], np.array([reward]), np.array([last]), [{}])
        if steps and not self.warming_up:
            self.model.train(self.updates_per_step * len(steps), self.batch_size)
            self._after_update()
        self.episodes_done += 1

    def _abandon(self, episode: int) -> None:
        self.steps.popleft()

    def _after_update(self) -> None:
        pass

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.model.policy.state_dict(),
            "optimizers": [o.state_dict() for o in self._optimizers()],
            "buffer": self.model.replay_buffer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "episodes_done": self.episodes_done,
            "n_updates": self.model._n_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.replay_buffer.load_state_dict(state["buffer"])  # first: it checks the configuration
        self.model.policy.load_state_dict(state["policy"])
        for optimizer, saved in zip(self._optimizers(), state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        self.rng.bit_generator.state = state["rng"]
        self.episodes_done = state["episodes_done"]
        self.model._n_updates = state["n_updates"]


class _DDPGLearner(_StepLearner):
    """AMC's and HAQ's agent: one continuous action in [0, 1] per step, uniform during the
    warm-up, then the actor's action with truncated-normal noise (sigma = init_noise x
    noise_decay^(episodes since the warm-up), kept in [0, 1] as AMC does)."""

    def __init__(
        self, space: SearchSpace, constraint: Constraint | None, config: DDPGConfig, seed: int, steps_per_episode: int
    ) -> None:
        env = _LayerStep(space.state_dim, spaces.Box(0.0, 1.0, (1,), np.float32))
        model = _built(
            _TwoRateDDPG,
            env,
            seed,
            learning_rate=config.actor_lr,
            buffer_size=max(config.buffer_episodes * steps_per_episode, 1),
            batch_size=config.batch_size,
            tau=config.tau,
            gamma=config.gamma,
            policy_kwargs={"net_arch": [config.hidden] * 2},
            replay_buffer_kwargs={"baseline_alpha": config.baseline_alpha, "seed": seed + 1},
        )
        update_learning_rate(model.critic.optimizer, config.critic_lr)
        super().__init__(
            space, constraint, model, config.warmup_episodes, config.updates_per_step, config.batch_size, seed
        )
        self.config = config

    def _act(self, state: np.ndarray) -> tuple[np.ndarray, float, Precision]:
        if self.warming_up:
            a = float(self.rng.uniform(0.0, 1.0))
        else:
            greedy = float(self.model.predict(state, deterministic=True)[0][0])
            sigma = self.config.init_noise * self.config.noise_decay ** (self.episodes_done - self.warmup_episodes)
            a = _truncated_normal(self.rng, greedy, sigma)
        keep, precision = self._action(a)
        return self.model.policy.scale_action(np.array([a], dtype=np.float32)), keep, precision

    def _action(self, a: float) -> tuple[float, Precision]:
        """The layer's (keep-ratio, precision) for action a in [0, 1]."""
        raise NotImplementedError

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.model.actor.optimizer, self.model.critic.optimizer]


def _truncated_normal(rng: np.random.Generator, mean: float, sigma: float) -> float:
    """A draw of N(mean, sigma) conditioned on [0, 1] (rejection: accepts at least a third of
    draws for a mean in [0, 1] and sigma <= 0.5)."""
    if sigma <= 0.0:
        return min(max(mean, 0.0), 1.0)
    while True:
        x = float(rng.normal(mean, sigma))
        if 0.0 <= x <= 1.0:
            return x


class AMCController(_DDPGLearner):
    """AMC: a keep-ratio for each layer that decides one (followers of a residual group and the
    classifier are not steps), every layer at fp32, bounded step by step (the `Enforcer`) so
    that the policy meets the target; channel counts are rounded by the pruner (`round_to`)."""

    name = "amc"

    def __init__(self, space: SearchSpace, constraint: Constraint | None, config: DDPGConfig, seed: int) -> None:
        if constraint is None:
            raise ValueError(
                "amc prunes to a target: pass constraint=params_constraint(...) (e.g. 0.25 for 75% "
                "fewer parameters) or constraint=latency_constraint(...)"
            )
        fp32 = replace(space, precisions=(Precision.FP32,), allowed=(), speed=())
        super().__init__(fp32, constraint, config, seed, steps_per_episode=sum(fp32.ratio_free()))

    def _decides(self, free: bool) -> bool:
        return free

    def _action(self, a: float) -> tuple[float, Precision]:
        return self.space.min_keep + a * (self.space.max_keep - self.space.min_keep), Precision.FP32


class HAQController(_DDPGLearner):
    """HAQ: a precision for every layer, no pruning. Action a in [0, 1] picks among the device's
    precisions in equal-width bins (HAQ's rounding of a continuous action to a bit width); a
    policy over budget has its precisions made one step cheaper at a time from the last layer
    back until it fits (HAQ's final action wall, `lower_precisions`). Cheaper means cheaper on
    this device: precisions are ordered by the cost of the model at each one everywhere, since
    fewer bits need not be faster (int4 weight-only runs slower than fp32 on onnxruntime's CPU
    provider)."""

    name = "haq"

    def __init__(self, space: SearchSpace, constraint: Constraint | None, config: DDPGConfig, seed: int) -> None:
        if constraint is None:
            raise ValueError(
                "haq searches precisions under a latency budget: pass "
                "constraint=latency_constraint(predict_ms, budget_ms)"
            )
        unpruned = replace(space, min_keep=1.0, max_keep=1.0)
        n = len(space.layers)
        cost = {p: constraint.cost(unpruned.policy([1.0] * n, [p] * n)) for p in space.precisions}
        self.costliest_first = sorted(space.precisions, key=lambda p: (-cost[p], -p.weight_bits))
        cheapest = self.costliest_first[-1]
        if cost[cheapest] > constraint.budget:
            raise ValueError(
                f"the {constraint.name} budget {constraint.budget:g} cannot be met without pruning: "
                f"{cheapest} on every layer, the cheapest, gives {cost[cheapest]:g}; raise the "
                "budget or allow other precisions"
            )
        super().__init__(unpruned, None, config, seed, steps_per_episode=n)
        self.constraint = constraint
        self.narrowest_first = sorted(space.precisions, key=lambda p: p.weight_bits)

    def _action(self, a: float) -> tuple[float, Precision]:
        n = len(self.narrowest_first)
        return 1.0, self.narrowest_first[min(int(a * n), n - 1)]

    def _propose(self, episode: int) -> Policy:
        policy = walk(self.space, self._choose(episode), None)
        precisions = lower_precisions(
            self.space, [a.precision for a in policy.layers.values()], self.constraint, self.costliest_first
        )
        return self.space.policy([1.0] * len(precisions), precisions)


def lower_precisions(
    space: SearchSpace, precisions: list[Precision], constraint: Constraint, costliest_first: Sequence[Precision]
) -> list[Precision]:
    """HAQ's final action wall on unpruned layers: while the policy is over budget, walk the
    layers from the last to the first, moving each one precision step along `costliest_first`
    (the device's precisions, costliest first) and stopping as soon as it fits."""
    order = list(costliest_first)
    precisions = list(precisions)

    def fits() -> bool:
        return constraint.cost(space.policy([1.0] * len(precisions), precisions)) <= constraint.budget

    while not fits():
        if all(p is order[-1] for p in precisions):
            raise ValueError(
                f"the {constraint.name} budget {constraint.budget:g} cannot be met even at {order[-1]} on every layer"
            )
        for i in reversed(range(len(precisions))):
            precisions[i] = order[min(order.index(precisions[i]) + 1, len(order) - 1)]
            if fits():
                break
    return precisions


class DQNController(_StepLearner):
    """A DQN over the joint action (keep-ratio bin, precision) of every layer; on a layer whose
    keep-ratio is not free only the precision takes effect."""

    name = "dqn"

    def __init__(self, space: SearchSpace, constraint: Constraint | None, config: DQNConfig, seed: int) -> None:
        keeps = [round(float(k), 4) for k in np.linspace(space.min_keep, space.max_keep, config.keep_bins)]
        self.joint = list(itertools.product(keeps, space.precisions))
        env = _LayerStep(space.state_dim, spaces.Discrete(len(self.joint)))
        model = _built(
            DQN,
            env,
            seed,
            learning_rate=config.lr,
            buffer_size=config.buffer_episodes * len(space.layers),
            batch_size=config.batch_size,
            gamma=config.gamma,
            policy_kwargs={"net_arch": [config.hidden] * 2},
            replay_buffer_kwargs={"baseline_alpha": config.baseline_alpha, "seed": seed + 1},
        )
        super().__init__(
            space, constraint, model, config.warmup_episodes, config.updates_per_step, config.batch_size, seed
        )
        self.config = config

    @property
    def epsilon(self) -> float:
        if self.warming_up:
            return 1.0
        progress = min((self.episodes_done - self.warmup_episodes) / self.config.explore_episodes, 1.0)
        return 1.0 + progress * (self.config.final_epsilon - 1.0)

    def _act(self, state: np.ndarray) -> tuple[np.ndarray, float, Precision]:
        if self.rng.random() < self.epsilon:
            index = int(self.rng.integers(len(self.joint)))
        else:
            index = int(self.model.predict(state, deterministic=True)[0])
        keep, precision = self.joint[index]
        return np.array([index]), keep, precision

    def _after_update(self) -> None:
        polyak_update(self.model.q_net.parameters(), self.model.q_net_target.parameters(), self.config.target_tau)

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.model.policy.optimizer]
