"""Controllers by name, the search's own and the papers' baselines behind one constructor.

A module of its own so that `controllers` (the interface and the plain controllers) and
`baselines` (built on that interface, and on Stable-Baselines3) never import each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from host.search.baselines import AMCController, DDPGConfig, DQNConfig, DQNController, HAQController
from host.search.controllers import Controller, PPOController, RandomController, UniformController
from host.search.ppo import PPOConfig
from host.search.reward import Constraint
from host.search.space import SearchSpace

if TYPE_CHECKING:
    from host.search.surrogate import RewardSurrogate

CONTROLLERS = ("ppo", "random", "uniform", "amc", "haq", "dqn")


def make_controller(
    name: str,
    space: SearchSpace,
    ppo: PPOConfig,
    seed: int,
    constraint: Constraint | None = None,
    ddpg: DDPGConfig | None = None,
    dqn: DQNConfig | None = None,
    surrogate: RewardSurrogate | None = None,
) -> Controller:
    """A controller by name; `constraint` bounds every policy it proposes (optional, but `amc`
    needs a target and `haq` a latency budget). `ddpg` configures amc and haq, `dqn` the DQN
    (their defaults when None); `surrogate` lets ppo practise between real episodes."""
    if name == "ppo":
        return PPOController(space, ppo, seed, constraint, surrogate)
    if name == "random":
        return RandomController(space, seed, constraint)
    if name == "uniform":
        return UniformController(space, constraint)
    if name == "dqn":
        return DQNController(space, constraint, dqn or DQNConfig(), seed)
    if name in ("amc", "haq"):
        learner = AMCController if name == "amc" else HAQController
        return learner(space, constraint, ddpg or DDPGConfig(), seed)
    raise ValueError(f"unknown controller {name!r}; choices: {', '.join(CONTROLLERS)}")
