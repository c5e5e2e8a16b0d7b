"""Controllers by name, the search's own and the papers' baselines behind one constructor.

A module of its own so that `controllers` (the interface and the plain controllers) and
`baselines` (built on that interface, and on Stable-Baselines3) never import each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from host.compress.policy import Policy
from host.search.baselines import AMCController, DDPGConfig, DQNConfig, DQNController, HAQController
from host.search.controllers import Controller, PPOController, RandomController, UniformController
from host.search.hirelc.controller import HiReLCController, HiReLCStart
from host.search.ppo import PPOConfig
from host.search.reward import Constraint
from host.search.space import SearchSpace

if TYPE_CHECKING:
    from host.search.surrogate import RewardSurrogate

CONTROLLERS = ("ppo", "random", "uniform", "amc", "haq", "dqn", "hirelc")


@dataclass(frozen=True)
class PPOStart:
    """What PPO may start with: a reward surrogate to practise on between real episodes, and
    proposals to play first (the best of them becomes its starting point)."""

    surrogate: RewardSurrogate | None = None
    proposals: Sequence[Policy] = ()


def make_controller(
    name: str,
    space: SearchSpace,
    ppo: PPOConfig,
    seed: int,
    constraint: Constraint | None = None,
    ddpg: DDPGConfig | None = None,
    dqn: DQNConfig | None = None,
    start: PPOStart | HiReLCStart | None = None,
) -> Controller:
    """A controller by name; `constraint` bounds every policy it proposes (optional, but `amc`
    needs a target and `haq` a latency budget). `ddpg` configures amc and haq, `dqn` the DQN
    (their defaults when None); `start` gives ppo its surrogate and warm start, hirelc its settings
    and what the search measured for it (blocks, sensitivity, proxy)."""
    if name == "ppo":
        start = start if isinstance(start, PPOStart) else PPOStart()
        return PPOController(space, ppo, seed, constraint, start.surrogate, start.proposals)
    if name == "random":
        return RandomController(space, seed, constraint)
    if name == "uniform":
        return UniformController(space, constraint)
    if name == "dqn":
        return DQNController(space, constraint, dqn or DQNConfig(), seed)
    if name in ("amc", "haq"):
        learner = AMCController if name == "amc" else HAQController
        return learner(space, constraint, ddpg or DDPGConfig(), seed)
    if name == "hirelc":
        if not isinstance(start, HiReLCStart):
            raise ValueError("controller hirelc needs its settings and the search's measurements (blocks, proxy)")
        return HiReLCController(space, start, seed, constraint)
    raise ValueError(f"unknown controller {name!r}; choices: {', '.join(CONTROLLERS)}")
