"""The reward surrogate PPO practises on (HiReLC): exact size, fits that recover a known truth,
Fisher sensitivity, and PPO with practice beating PPO without and random search at 15 real
episodes on a synthetic device whose truth is in the surrogate's family."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from host.compress.policy import Policy
from host.compress.prune import layer_limits, prune
from host.compress.size import size_report
from host.models import build_model
from host.search.budget import LatencyEstimator
from host.search.evaluate import EpisodeResult
from host.search.loop import RewardReference, one_by_one, run_episodes
from host.search.ppo import PPOConfig
from host.search.registry import PPOStart, make_controller
from host.search.reward import RewardConfig
from host.search.space import ParamCounter, SearchSpace, describe_layers
from host.search.surrogate import RewardSurrogate, layer_sensitivity
from lut_store.precision import Precision
from tests.helpers import ORT_CPU

SHAPE = (3, 64, 64)
EXAMPLE = torch.zeros((1, *SHAPE))


@functools.cache
def _net(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, 6, SHAPE)


@functools.cache
def _parts(name: str) -> tuple[SearchSpace, ParamCounter, LatencyEstimator]:
    net = _net(name)
    space = SearchSpace(name, describe_layers(net, EXAMPLE, layer_limits(net, EXAMPLE)), ORT_CPU)
    counter = ParamCounter(net, EXAMPLE)
    names = [layer.name for layer in space.layers]
    flops = {layer.name: layer.flops / 1e6 for layer in space.layers}
    # A device where int8 runs at 0.3x the FP32 time, fp16 at 1.2x, int4 at 1.5x, fp8 at 1.4x,
    # latency ~ work^0.8.
    speed = {Precision.FP32: 1.0, Precision.FP16: 1.2, Precision.INT8: 0.3, Precision.INT4W: 1.5, Precision.FP8: 1.4}
    estimator = LatencyEstimator(
        counter,
        {p: {n: 0.01 * flops[n] * s for n in names} for p, s in speed.items()},
        {p: {n: 0.8 for n in names} for p in speed},
        other_ms=0.05,
    )
    return space, counter, estimator


def _surrogate(name: str, sensitivity: dict[str, float] | None = None) -> RewardSurrogate:
    space, counter, estimator = _parts(name)
    sensitivity = sensitivity or {layer.name: 1.0 / len(space.layers) for layer in space.layers}
    base = Policy.uniform(name, [layer.name for layer in space.layers], 1.0, Precision.FP32)
    return RewardSurrogate(
        space,
        counter,
        estimator,
        sensitivity,
        estimator(base),
        4 * sum(p.numel() for p in _net(name).parameters()),
        RewardConfig(),
    )


def _random_policies(space: SearchSpace, n: int, seed: int) -> list[Policy]:
    rng = np.random.default_rng(seed)
    k = len(space.layers)
    return [
        space.policy(
            rng.uniform(space.min_keep, space.max_keep, k).tolist(),
            [space.precisions[i] for i in rng.choice(len(space.precisions), k)],
        )
        for _ in range(n)
    ]


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
def test_size_is_the_pruned_models_effective_size(name):
    surrogate = _surrogate(name)
    net = _net(name)
    base_params = sum(p.numel() for p in net.parameters())
    for policy in _random_policies(surrogate.space, 3, seed=1):
        pruned = prune(copy.deepcopy(net), policy, EXAMPLE, round_to=8).model
        assert surrogate.size_bytes(policy) == size_report(pruned, policy, base_params).effective_bytes


def test_fits_recover_a_truth_in_their_family():
    surrogate = _surrogate("resnet18")
    space = surrogate.space
    coef = np.array([0.3, 0.5, 0.0, 0.02, 0.01, 0.2])  # pruned, pruned^2, then int4, int8, fp8, fp16 layers

    def truth_acc(p):
        return 0.95 - coef @ surrogate.accuracy_features(p)

    def truth_ms(p):
        return surrogate.estimator(p) + 0.02 + 3e-7 * surrogate.boundary_elements(p)

    for policy in _random_policies(space, 12, seed=2):
        surrogate.add(policy, truth_acc(policy), truth_ms(policy))
    for policy in _random_policies(space, 5, seed=3):
        assert surrogate.accuracy(policy) == pytest.approx(truth_acc(policy), abs=2e-3)
        assert surrogate.latency_ms(policy) == pytest.approx(truth_ms(policy), rel=1e-3)
    # Refitted from its checkpoint, it predicts the same.
    restored = _surrogate("resnet18")
    restored.load_state_dict(surrogate.state_dict())
    probe = _random_policies(space, 1, seed=4)[0]
    assert restored.reward(probe) == surrogate.reward(probe)


def test_an_unfitted_surrogate_refuses_to_score():
    surrogate = _surrogate("mlp")
    with pytest.raises(RuntimeError, match="no real episode"):
        surrogate.reward(_random_policies(surrogate.space, 1, seed=0)[0])


class _TwoBranches(torch.nn.Module):
    """Logits from branch a (on the feature that decides the label) plus branch b (on noise)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(2, 2)
        self.b = torch.nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x[:, :2]) + self.b(x[:, 2:])


def test_fisher_sensitivity_ranks_the_layer_that_decides_above_one_that_adds_noise():
    torch.manual_seed(0)
    net = _TwoBranches()
    with torch.no_grad():
        net.b.weight.mul_(0.01)
    x = torch.randn(128, 4)
    y = (x[:, 0] > 0).long()
    shares = layer_sensitivity(net, DataLoader(TensorDataset(x, y), batch_size=32), ["a", "b"])
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["a"] > 0.9 > shares["b"] >= 0.0
    assert all(p.grad is None or not p.grad.any() for p in net.parameters())  # no gradients left behind
    # A teacher that distillation froze gets the same shares and stays frozen; no data is an error.
    for p in net.parameters():
        p.requires_grad_(False)
    frozen = layer_sensitivity(net, DataLoader(TensorDataset(x, y), batch_size=32), ["a", "b"])
    assert frozen == pytest.approx(shares) and not any(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match="0 batch"):
        layer_sensitivity(net, [], ["a", "b"])


@pytest.mark.timeout(900)  # CPU-bound: about a minute alone, several times that on a shared machine
def test_ppo_practising_on_the_surrogate_beats_ppo_alone_and_random_search():
    """The synthetic device's truth is in the surrogate's family (so the surrogate can be right):
    accuracy falls with Fisher-weighted pruning and with int4/int8/fp8 layers, latency is the
    estimator's plus conversions at precision boundaries. At 15 real episodes, PPO practising 32
    surrogate episodes after each beats PPO alone and random search in best real reward, on
    every seed (measured: 1.15-1.26 against 0.99-1.04 and 0.99-1.01)."""
    space, _, estimator = _parts("resnet18")
    truth = _surrogate("resnet18")
    coef = np.array([0.05, 0.15, 0.3, 0.01, 0.005, 0.0])  # pruned, pruned^2, int4, int8, fp8, fp16: keep 0.5, -12 pt

    def evaluate(policy: Policy, episode: int) -> EpisodeResult:
        acc = float(np.clip(0.97 - coef @ truth.accuracy_features(policy), 0, 1))
        ms = estimator(policy) + 3e-6 * truth.boundary_elements(policy)
        return EpisodeResult(acc, ms, 0, truth.size_bytes(policy), (), 0)

    base = RewardReference(truth.base_latency_ms, truth.base_size_bytes)
    practice = PPOConfig(actor_lr=1e-3, critic_lr=3e-3, surrogate_episodes=32)
    alone = PPOConfig(actor_lr=1e-3, critic_lr=3e-3)
    best: dict[str, list[float]] = {"practice": [], "alone": [], "random": []}
    for seed in range(3):
        runs = {
            "practice": make_controller("ppo", space, practice, seed, start=PPOStart(_surrogate("resnet18"))),
            "alone": make_controller("ppo", space, alone, seed),
            "random": make_controller("random", space, alone, seed),
        }
        for label, controller in runs.items():
            best[label].append(
                max(e.reward for e in run_episodes(controller, one_by_one(evaluate), 15, base, RewardConfig()))
            )
    assert all(
        p > max(a, r) + 0.05 for p, a, r in zip(best["practice"], best["alone"], best["random"], strict=False)
    ), best


def test_resume_with_practice_repeats_nothing_and_loses_nothing(tmp_path):
    space, _, estimator = _parts("mlp")
    truth = _surrogate("mlp")

    def evaluate(policy: Policy, episode: int) -> EpisodeResult:
        return EpisodeResult(
            float(0.9 - 0.3 * truth.accuracy_features(policy)[0]), estimator(policy), 0, truth.size_bytes(policy), (), 0
        )

    base = RewardReference(truth.base_latency_ms, truth.base_size_bytes)
    config = PPOConfig(surrogate_episodes=5, surrogate_warmup=2, surrogate_batch=2)
    straight = run_episodes(
        make_controller("ppo", space, config, 3, start=PPOStart(_surrogate("mlp"))),
        one_by_one(evaluate),
        5,
        base,
        RewardConfig(),
    )
    first = make_controller("ppo", space, config, 3, start=PPOStart(_surrogate("mlp")))
    seen = run_episodes(first, one_by_one(evaluate), 3, base, RewardConfig())
    assert first.practised == 10
    torch.save(first.state_dict(), tmp_path / "ppo.pt")
    torch.manual_seed(99)
    resumed = make_controller("ppo", space, config, 7, start=PPOStart(_surrogate("mlp")))
    resumed.load_state_dict(torch.load(tmp_path / "ppo.pt", weights_only=True))
    seen += run_episodes(resumed, one_by_one(evaluate), 5, base, RewardConfig(), start_episode=3)
    assert [e.policy for e in seen] == [e.policy for e in straight]
    assert [e.reward for e in seen] == [e.reward for e in straight]
