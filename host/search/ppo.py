"""PPO with a hybrid action: a Gaussian head for the keep-ratio, a categorical head for the
precision (Schulman et al. 2017, https://arxiv.org/abs/1707.06347; GAE: Schulman et al. 2016,
https://arxiv.org/abs/1506.02438). One episode walks the layers, one step per layer; the reward
arrives at the last step.

The ratio is sampled as u ~ N(mu, sigma) and squashed: keep = lo + (hi - lo) * sigmoid(u). PPO's
probability ratio is taken in u-space, where it equals the ratio in keep-space (the squash's
Jacobian cancels). Steps whose ratio is not free (a residual group's followers, the classifier)
leave the Gaussian out of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

IMITATION_STEPS = 300  # Adam steps of a warm start's behaviour cloning (one episode's states: well under a second)
IMITATION_LR = 1e-2


@dataclass(frozen=True)
class PPOConfig:
    """Paper defaults: actor 1e-4, critic 3e-4, gamma 0.99, lambda 0.95, clip 0.2, 10 epochs,
    mini-batch 64."""

    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    epochs: int = 10
    minibatch: int = 64
    hidden: int = 64
    init_log_std: float = -0.5
    entropy_coef: float = 0.01
    update_every: int = 1  # episodes per update
    # The LUT's prior on precisions (host/search/prior.py): logits start biased by this many times
    # each precision's speed at the layer (1 for the fastest); 0 turns the prior off.
    prior_strength: float = 2.0
    # HiReLC's surrogate rewards (host.search.surrogate), not in HAD-MC 2.0: after each real
    # episode from the `surrogate_warmup`-th on, practise `surrogate_episodes` episodes scored by
    # the surrogate, updating every `surrogate_batch` of them. 0: PPO learns from real episodes only.
    surrogate_episodes: int = 0
    surrogate_warmup: int = 3
    surrogate_batch: int = 8

    def __post_init__(self) -> None:
        check_counts(
            self,
            epochs=1,
            minibatch=1,
            hidden=1,
            update_every=1,
            surrogate_episodes=0,
            surrogate_warmup=0,
            surrogate_batch=1,
        )


def check_counts(config: Any, **minimum: int) -> None:
    """Each named setting of `config` is at least its minimum (a clear error, not a crash later)."""
    for name, least in minimum.items():
        if getattr(config, name) < least:
            raise ValueError(f"{type(config).__name__}.{name} = {getattr(config, name)}: give at least {least}")


def gae(
    rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, last_value: float, gamma: float, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimates and returns of one trajectory (dones[t]: step t ends an
    episode, so nothing flows back across it)."""
    adv = np.zeros(len(rewards), dtype=np.float64)
    running = 0.0
    for t in reversed(range(len(rewards))):
        next_value = last_value if t == len(rewards) - 1 else values[t + 1]
        live = 1.0 - float(dones[t])
        delta = rewards[t] + gamma * next_value * live - values[t]
        running = delta + gamma * lam * live * running
        adv[t] = running
    return adv, adv + values


def clipped_surrogate(
    logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, clip: float
) -> torch.Tensor:
    """PPO's clipped objective as a loss (negated, averaged)."""
    ratio = torch.exp(logp_new - logp_old)
    return -torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages).mean()


class ActorCritic(nn.Module):
    def __init__(self, state_dim: int, n_precisions: int, config: PPOConfig, speed_features: bool = False) -> None:
        super().__init__()
        h = config.hidden
        self.actor = nn.Sequential(nn.Linear(state_dim, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh())
        self.mu = nn.Linear(h, 1)
        self.precision_logits = nn.Linear(h, n_precisions)
        self.log_std = nn.Parameter(torch.full((1,), config.init_log_std))
        self.prior_strength = config.prior_strength if speed_features else 0.0
        self.critic = nn.Sequential(nn.Linear(state_dim, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 1))

    def dists(
        self, states: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.distributions.Normal, torch.distributions.Categorical]:
        """The keep-ratio Gaussian and the precision categorical of each state. The logits add
        the LUT's prior, `prior_strength` times the state's per-precision speed features (its
        last entries, present with a LUT prior), and exclude the precisions `masks` rules out."""
        z = self.actor(states)
        n = self.precision_logits.out_features
        logits = self.precision_logits(z)
        if self.prior_strength:
            logits = logits + self.prior_strength * states[..., -n:]
        return (
            torch.distributions.Normal(self.mu(z).squeeze(-1), self.log_std.exp()),
            torch.distributions.Categorical(logits=logits.masked_fill(~masks, -1e9)),
        )

    def value(self, states: torch.Tensor) -> torch.Tensor:
        return self.critic(states).squeeze(-1)


@dataclass
class Rollout:
    """Transitions of whole episodes, in order."""

    states: list[np.ndarray] = field(default_factory=list)
    u: list[float] = field(default_factory=list)
    precision_index: list[int] = field(default_factory=list)
    masks: list[list[bool]] = field(default_factory=list)  # the precisions each step could take
    logp: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    free: list[bool] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    dones: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.states)


class HybridPPO:
    """Acts step by step and learns from finished episodes."""

    def __init__(
        self, state_dim: int, n_precisions: int, config: PPOConfig, seed: int, speed_features: bool = False
    ) -> None:
        self.config = config
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, the global generator untouched
            torch.manual_seed(seed)
            self.net = ActorCritic(state_dim, n_precisions, config, speed_features)
        actor_params = [p for n, p in self.net.named_parameters() if not n.startswith("critic")]
        self.actor_opt = torch.optim.Adam(actor_params, lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.net.critic.parameters(), lr=config.critic_lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.rollout = Rollout()
        self.episodes_in_rollout = 0
        # The first step of each episode begun and not yet finished, oldest first: a batch of
        # episodes is acted before its rewards arrive (as with several environments).
        self.open_episodes: list[int] = []

    def begin_episode(self) -> None:
        """The steps acted from now on are a new episode's."""
        self.open_episodes.append(len(self.rollout))

    def _oldest_open(self) -> tuple[int, int]:
        """The step range [start, end) of the oldest open episode."""
        if not self.open_episodes:
            raise ValueError("no episode is open: begin_episode() before acting")
        start = self.open_episodes[0]
        end = self.open_episodes[1] if len(self.open_episodes) > 1 else len(self.rollout)
        return start, end

    def act(self, state: np.ndarray, free: bool, mask: np.ndarray) -> tuple[float, int]:
        """Sample (u, precision index among those `mask` allows) for one step and record it."""
        s = torch.as_tensor(state).unsqueeze(0)
        m = torch.as_tensor(mask, dtype=torch.bool).unsqueeze(0)
        with torch.no_grad():
            normal, cat = self.net.dists(s, m)
            u = normal.mean + normal.stddev * torch.randn(1, generator=self.generator)
            probs = cat.probs.squeeze(0)
            index = int(torch.multinomial(probs, 1, generator=self.generator))
            logp = float(cat.log_prob(torch.tensor([index]))) + (float(normal.log_prob(u)) if free else 0.0)
            value = float(self.net.value(s))
        r = self.rollout
        r.states.append(state)
        r.u.append(float(u))
        r.precision_index.append(index)
        r.masks.append([bool(x) for x in mask])
        r.logp.append(logp)
        r.values.append(value)
        r.free.append(free)
        r.rewards.append(0.0)
        r.dones.append(False)
        return float(u), index

    def finish_episode(self, reward: float, update_every: int | None = None) -> None:
        """The oldest open episode's reward, on its last step; update every `update_every`
        episodes (the config's when None) once no episode is open."""
        _, end = self._oldest_open()
        self.open_episodes.pop(0)
        self.rollout.rewards[end - 1] = reward
        self.rollout.dones[end - 1] = True
        self.episodes_in_rollout += 1
        if self.episodes_in_rollout >= (update_every or self.config.update_every) and not self.open_episodes:
            self.update()

    def abandon_episode(self) -> None:
        """Forget the oldest open episode (it could not be scored): its steps leave the rollout."""
        start, end = self._oldest_open()
        self.open_episodes = [s - (end - start) for s in self.open_episodes[1:]]
        for steps in self.rollout.__dict__.values():
            del steps[start:end]

    def update(self) -> None:
        c, r = self.config, self.rollout
        adv, ret = gae(np.array(r.rewards), np.array(r.values), np.array(r.dones), 0.0, c.gamma, c.gae_lambda)
        states = torch.as_tensor(np.stack(r.states))
        u = torch.tensor(r.u)
        precision_index = torch.tensor(r.precision_index)
        masks = torch.tensor(r.masks, dtype=torch.bool)
        logp_old = torch.tensor(r.logp)
        free = torch.tensor(r.free, dtype=torch.float32)
        adv_t = torch.as_tensor(adv, dtype=torch.float32)
        # Scaled, not centred: an update may hold a single episode whose steps share one reward,
        # and centring would erase exactly the signal "this episode beat the critic's estimate".
        if len(adv_t) > 1:
            adv_t = adv_t / (adv_t.std() + 1e-8)
        ret_t = torch.as_tensor(ret, dtype=torch.float32)
        n = len(r)
        for _ in range(c.epochs):
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n, c.minibatch):
                idx = order[start : start + c.minibatch]
                normal, cat = self.net.dists(states[idx], masks[idx])
                logp = cat.log_prob(precision_index[idx]) + normal.log_prob(u[idx]) * free[idx]
                entropy = (cat.entropy() + normal.entropy() * free[idx]).mean()
                actor_loss = clipped_surrogate(logp, logp_old[idx], adv_t[idx], c.clip) - c.entropy_coef * entropy
                self.actor_opt.zero_grad()
                actor_loss.backward()
                self.actor_opt.step()
                critic_loss = ((self.net.value(states[idx]) - ret_t[idx]) ** 2).mean()
                self.critic_opt.zero_grad()
                critic_loss.backward()
                self.critic_opt.step()
        self.rollout = Rollout()
        self.episodes_in_rollout = 0

    def imitate(
        self, states: np.ndarray, u: np.ndarray, precision_index: np.ndarray, free: np.ndarray, masks: np.ndarray
    ) -> float:
        """Behaviour cloning onto one episode's actions (a warm start): the Gaussian mean of each
        free step regresses onto its `u`, the precision head onto its choice; the spread, the
        critic and the PPO optimiser are left as they are. Returns the final loss."""
        states_t = torch.as_tensor(states, dtype=torch.float32)
        u_t = torch.as_tensor(u, dtype=torch.float32)
        index = torch.as_tensor(precision_index)
        free_t = torch.as_tensor(free, dtype=torch.float32)
        masks_t = torch.as_tensor(masks, dtype=torch.bool)
        params = [p for n, p in self.net.named_parameters() if not n.startswith("critic") and n != "log_std"]
        optimiser = torch.optim.Adam(params, lr=IMITATION_LR)
        loss = torch.zeros(())
        for _ in range(IMITATION_STEPS):
            normal, cat = self.net.dists(states_t, masks_t)
            loss = ((normal.mean - u_t) ** 2 * free_t).sum() / free_t.sum().clamp(min=1) - cat.log_prob(index).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "generator": self.generator.get_state(),
            "rollout": {**self.rollout.__dict__, "states": [x.tolist() for x in self.rollout.states]},
            "episodes_in_rollout": self.episodes_in_rollout,
            "open_episodes": list(self.open_episodes),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.generator.set_state(state["generator"])
        rollout = dict(state["rollout"])
        rollout["states"] = [np.asarray(x, dtype=np.float32) for x in rollout["states"]]
        self.rollout = Rollout(**rollout)
        self.episodes_in_rollout = state["episodes_in_rollout"]
        self.open_episodes = list(state.get("open_episodes", []))
