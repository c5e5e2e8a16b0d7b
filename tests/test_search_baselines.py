"""The papers' baseline controllers (AMC, HAQ, DQN on Stable-Baselines3), without a device: their
action spaces and constraints, AMC's transitions and reward baseline, HAQ's action wall in closed
form, learning on synthetic rewards, exact resume from a weights-only checkpoint, bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from host.compress.policy import Policy, validate
from host.search.baselines import (
    BaselineReplayBuffer,
    DDPGConfig,
    DQNConfig,
    lower_precisions,
)
from host.search.evaluate import EpisodeResult
from host.search.loop import Recorder, one_by_one, run_episodes
from host.search.ppo import PPOConfig
from host.search.registry import CONTROLLERS, make_controller
from host.search.reward import Constraint, latency_constraint, params_constraint
from host.search.space import ParamCounter, SearchSpace
from lut_store.precision import Precision
from tests.test_search_core import BASE, FP16, FP32, INT4, INT8, SHAPE, W, _model, _result, _space, _synthetic

SMALL = DDPGConfig(warmup_episodes=2, hidden=32, batch_size=16)
SMALL_DQN = DQNConfig(keep_bins=3, warmup_episodes=2, explore_episodes=3, hidden=32, batch_size=16)
SPEED = {FP32: 1.0, FP16: 0.6, INT8: 0.25, INT4: 0.2}  # synthetic latency per FLOP, relative to FP32
LOOSE = Constraint("latency_ms", 1e9, lambda policy: 1.0)  # never binds


def _make(
    name: str,
    space: SearchSpace,
    seed: int = 0,
    constraint: Constraint | None = None,
    ddpg: DDPGConfig = SMALL,
    dqn: DQNConfig = SMALL_DQN,
):
    return make_controller(name, space, PPOConfig(), seed, constraint, ddpg=ddpg, dqn=dqn)


def _latency(space: SearchSpace):
    """Synthetic latency in ms: FLOPs x keep-ratio x the precision's relative cost."""

    def latency_ms(policy: Policy) -> float:
        return (
            sum(
                x.flops * policy.layers[x.name].keep_ratio * SPEED[policy.layers[x.name].precision]
                for x in space.layers
            )
            / 1e8
        )

    full = latency_ms(Policy.uniform(space.model, [x.name for x in space.layers], 1.0, FP32))
    return latency_ms, full


def _params_target(model: str, fraction: float) -> tuple[Constraint, ParamCounter, int]:
    net, _ = _model(model)
    count = ParamCounter(net, torch.zeros((1, *SHAPE)))
    base = sum(p.numel() for p in net.parameters())
    return params_constraint(count, base, fraction), count, base


# ---- the action spaces and their bounds ----


@pytest.mark.parametrize("model", ["resnet18", "mobilenetv2"])
def test_amc_prunes_at_fp32_and_meets_a_params_target(model):
    constraint, count, base = _params_target(model, 0.25)
    space = _space(model)
    controller = _make("amc", space, constraint=constraint)
    for episode in run_episodes(controller, one_by_one(_synthetic), 5, BASE, W):  # 2 random, 3 from the actor
        policy = episode.policy
        validate(policy, model, _model(model)[1])
        assert {a.precision for a in policy.layers.values()} == {FP32}
        assert all(
            space.min_keep <= a.keep_ratio <= space.max_keep or a.keep_ratio == 1.0 for a in policy.layers.values()
        )
        assert count(policy) <= 0.25 * base


def test_amc_meets_a_latency_budget_at_fp32():
    space = _space("resnet18")
    latency_ms, full = _latency(space)
    # Keep-ratio 0.2 everywhere gives 0.2 x full at FP32: the budget is met without lower
    # precisions, which AMC never uses (an enforcer assuming int8 later layers would miss it).
    controller = _make("amc", space, constraint=latency_constraint(latency_ms, 0.3 * full))
    for episode in run_episodes(controller, one_by_one(_synthetic), 5, BASE, W):
        assert {a.precision for a in episode.policy.layers.values()} == {FP32}
        assert latency_ms(episode.policy) <= 0.3 * full


def test_haq_keeps_every_channel_and_meets_the_latency_budget():
    space = _space("resnet18")
    latency_ms, full = _latency(space)
    controller = _make("haq", space, constraint=latency_constraint(latency_ms, 0.4 * full))
    seen = set()
    for episode in run_episodes(controller, one_by_one(_synthetic), 5, BASE, W):
        policy = episode.policy
        validate(policy, "resnet18", _model("resnet18")[1])
        assert {a.keep_ratio for a in policy.layers.values()} == {1.0}
        assert latency_ms(policy) <= 0.4 * full
        seen |= {a.precision for a in policy.layers.values()}
    assert seen <= set(space.precisions) and len(seen) > 1


def test_haq_action_wall_in_closed_form():
    order = (FP32, FP16, INT8)
    space = _space("mlp", precisions=order)

    def total_bits(policy: Policy) -> float:
        return sum(a.precision.weight_bits for a in policy.layers.values())

    def lowered(precisions: list[Precision], budget: float) -> list[Precision]:
        return lower_precisions(space, precisions, Constraint("bits", budget, total_bits), order)

    # 32+32+32 = 96; lowering from the last layer back: 32+32+16 = 80, 32+16+16 = 64, 16+16+16 = 48.
    assert lowered([FP32, FP32, FP32], 70) == [FP32, FP16, FP16]
    assert lowered([FP32, FP32, FP32], 60) == [FP16, FP16, FP16]
    # A second pass: 16+16+16 = 48 > 40 -> 16+16+8 = 40.
    assert lowered([FP32, FP32, FP32], 40) == [FP16, FP16, INT8]
    assert lowered([INT8, FP32, INT8], 100) == [INT8, FP32, INT8]
    with pytest.raises(ValueError, match="cannot be met even at int8 on every layer"):
        lowered([FP32, FP32, FP32], 20)


def test_haq_makes_precisions_cheaper_on_the_device_not_narrower():
    """A device where int4 costs more than fp32 and int8 least (onnxruntime's CPU provider): the
    wall moves int4 -> fp32 -> int8, and the feasibility check uses the cheapest precision, int8."""
    space = _space("mlp", precisions=(FP32, INT8, INT4))
    cpu = {FP32: 1.0, INT8: 0.3, INT4: 1.5}

    def cost(policy: Policy) -> float:
        return sum(cpu[a.precision] for a in policy.layers.values())

    budget = Constraint("latency_ms", 2.0, cost)
    controller = _make("haq", space, constraint=budget)
    assert controller.costliest_first == [INT4, FP32, INT8]
    assert lower_precisions(space, [INT4, INT4, INT4], budget, controller.costliest_first) == [FP32, INT8, INT8]
    for episode in run_episodes(controller, one_by_one(_synthetic), 4, BASE, W):
        assert cost(episode.policy) <= 2.0
    with pytest.raises(ValueError, match="int8 on every layer, the cheapest, gives 0.9"):
        _make("haq", space, constraint=Constraint("latency_ms", 0.5, cost))


@pytest.mark.parametrize("model", ["resnet18", "mobilenetv2"])
def test_dqn_acts_on_the_joint_grid(model):
    space = _space(model, precisions=(FP16, INT8))
    _, limits = _model(model)
    controller = _make("dqn", space)
    assert controller.joint == [(0.2, FP16), (0.2, INT8), (0.55, FP16), (0.55, INT8), (0.9, FP16), (0.9, INT8)]
    for episode in run_episodes(controller, one_by_one(_synthetic), 5, BASE, W):
        validate(episode.policy, model, limits)
        for lim in limits:
            action = episode.policy.layers[lim.name]
            assert action.precision in (FP16, INT8)
            assert action.keep_ratio in ((1.0,) if lim.group is None else (0.2, 0.55, 0.9))


def test_dqn_meets_a_params_target():
    constraint, count, base = _params_target("resnet18", 0.25)
    controller = _make("dqn", _space("resnet18"), constraint=constraint)
    for episode in run_episodes(controller, one_by_one(_synthetic), 4, BASE, W):
        assert count(episode.policy) <= 0.25 * base


@pytest.mark.parametrize("name", ["amc", "haq", "dqn"])
def test_every_baseline_spends_exactly_the_budget(name):
    space = _space("mlp", precisions=(INT8, FP32))
    calls, seen = [], []
    episodes = run_episodes(
        _make(name, space, constraint=LOOSE),
        one_by_one(lambda p, k: calls.append(k) or _synthetic(p, k)),
        9,
        BASE,
        W,
        record=Recorder(seen.append),
    )
    assert calls == list(range(9)) and [e.index for e in seen] == calls and seen == episodes


# ---- AMC's transitions and reward baseline ----


def test_every_step_of_an_episode_is_stored_with_its_final_reward():
    space = _space("resnet18")
    controller = _make("amc", space, constraint=LOOSE)
    controller.propose(0)
    controller.observe(0.7)
    buffer = controller.model.replay_buffer
    steps = sum(space.ratio_free())  # AMC decides only the layers whose keep-ratio is free
    assert buffer.size() == steps
    assert np.allclose(buffer.rewards[:steps, 0], 0.7)
    assert buffer.dones[:steps, 0].tolist() == [0.0] * (steps - 1) + [1.0]
    assert np.array_equal(buffer.next_observations[: steps - 1], buffer.observations[1:steps])
    assert np.array_equal(buffer.next_observations[steps - 1], buffer.observations[steps - 1])
    assert np.all(np.abs(buffer.actions[:steps]) <= 1.0)  # SB3 stores actions scaled to [-1, 1]


def test_the_reward_baseline_is_a_moving_average_of_sampled_batches():
    space = _space("mlp")
    controller = _make("amc", space, constraint=LOOSE)
    buffer: BaselineReplayBuffer = controller.model.replay_buffer
    for reward in (2.0, 2.0):
        controller.propose(0)
        controller.observe(reward)
    assert buffer.baseline is None  # still warming up: nothing sampled
    assert torch.allclose(buffer.sample(8).rewards, torch.zeros(8, 1))  # b = 2
    buffer.rewards[:] = 4.0
    assert torch.allclose(buffer.sample(8).rewards, torch.ones(8, 1))  # b = 2 + 0.5 (4 - 2) = 3
    assert buffer.baseline == pytest.approx(3.0)


# ---- learning ----


def _targets(space: SearchSpace):
    n = len(space.layers)
    keep = {x.name: 0.2 + 0.7 * t / (n - 1) for t, x in enumerate(space.layers)}
    precision = {x.name: FP32 if x.kind == "linear" else INT8 for x in space.layers}
    decided = [x.name for x, free in zip(space.layers, space.ratio_free(), strict=True) if free]

    def keep_score(policy: Policy) -> float:
        return float(np.exp(-10 * np.mean([(policy.layers[x].keep_ratio - keep[x]) ** 2 for x in decided])))

    def precision_score(policy: Policy) -> float:
        return float(np.mean([policy.layers[x].precision is precision[x] for x in precision]))

    return keep_score, precision_score


@pytest.mark.parametrize("name, margin", [("amc", 0.15), ("haq", 0.25), ("dqn", 0.1)])
def test_baselines_learn_a_per_layer_pattern(name, margin):
    """Synthetic rewards best at keep-ratios growing with depth (amc), int8 on convolutions and
    fp32 on the classifier (haq), or both (dqn). Over 50 episodes each agent's last 10 beat random
    search's average at the same budget by a margin (measured over seeds 0-7: by at least 0.27
    for amc, 0.44 for haq, 0.19 for dqn)."""
    space = _space("resnet18")
    keep_score, precision_score = _targets(space)
    score = {"amc": keep_score, "haq": precision_score, "dqn": lambda p: keep_score(p) * precision_score(p)}[name]

    def evaluate(policy: Policy, episode: int) -> EpisodeResult:
        return _result(score(policy))

    for seed in (0, 1):
        learner = _make(
            name, space, seed, LOOSE if name != "dqn" else None, ddpg=DDPGConfig(hidden=64), dqn=DQNConfig()
        )
        rewards = [e.reward for e in run_episodes(learner, one_by_one(evaluate), 50, BASE, W)]
        random = [
            e.reward
            for e in run_episodes(
                make_controller("random", space, PPOConfig(), seed), one_by_one(evaluate), 50, BASE, W
            )
        ]
        assert np.mean(rewards[-10:]) > np.mean(random) + margin
        assert np.mean(rewards[-10:]) > np.mean(rewards[:5]) + margin  # the first 5: random warm-up


# ---- exact resume ----


@pytest.mark.parametrize("name", ["amc", "haq", "dqn"])
def test_resume_from_a_weights_only_checkpoint_repeats_nothing_and_loses_nothing(name, tmp_path):
    space = _space("resnet18")
    constraint = _params_target("resnet18", 0.25)[0] if name != "haq" else LOOSE
    straight = run_episodes(_make(name, space, 5, constraint), one_by_one(_synthetic), 6, BASE, W)
    first = _make(name, space, 5, constraint)
    seen = run_episodes(first, one_by_one(_synthetic), 3, BASE, W)  # 2 warm-up episodes, then one update
    torch.save({"controller": first.state_dict()}, tmp_path / "controller.pt")
    torch.manual_seed(1234)  # a resumed process starts with other global generators
    np.random.seed(1234)
    resumed = _make(name, space, 99, constraint)
    resumed.load_state_dict(torch.load(tmp_path / "controller.pt", weights_only=True)["controller"])
    seen += run_episodes(resumed, one_by_one(_synthetic), 6, BASE, W, start_episode=3)
    assert [e.index for e in seen] == list(range(6))
    assert [e.policy for e in seen] == [e.policy for e in straight]
    assert [e.reward for e in seen] == [e.reward for e in straight]
    assert len({e.policy.to_json() for e in straight}) == 6


def test_a_checkpoint_from_another_configuration_is_refused():
    space = _space("mlp")
    first = _make("dqn", space)
    run_episodes(first, one_by_one(_synthetic), 2, BASE, W)  # 6 transitions
    smaller = _make("dqn", space, dqn=replace(SMALL_DQN, buffer_episodes=1))  # room for 3
    with pytest.raises(ValueError, match="resume with the configuration the run was started with"):
        smaller.load_state_dict(first.state_dict())


# ---- bad input ----


def test_bad_input_is_refused():
    space = _space("resnet18")
    assert {"amc", "haq", "dqn"} <= set(CONTROLLERS)
    with pytest.raises(ValueError, match=r"amc prunes to a target: pass constraint=params_constraint"):
        make_controller("amc", space, PPOConfig(), 0)
    with pytest.raises(ValueError, match=r"haq .* latency budget: pass constraint=latency_constraint"):
        make_controller("haq", space, PPOConfig(), 0)
    latency_ms, full = _latency(space)
    with pytest.raises(ValueError, match=r"cannot be met without pruning: int4 on every layer"):
        make_controller("haq", space, PPOConfig(), 0, latency_constraint(latency_ms, 0.1 * full))
    with pytest.raises(ValueError, match=r"latency_ms budget .* cannot be met"):  # amc: FP32 only
        make_controller("amc", space, PPOConfig(), 0, latency_constraint(latency_ms, 0.1 * full))
    for bins in (0, 1):
        with pytest.raises(ValueError, match="at least 2 keep-ratio bins"):
            DQNConfig(keep_bins=bins)
    with pytest.raises(ValueError, match=r"DDPGConfig.batch_size = 0: give at least 1"):
        DDPGConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"DQNConfig.warmup_episodes = -1: give at least 0"):
        DQNConfig(warmup_episodes=-1)
    with pytest.raises(ValueError, match="choices: ppo, random, uniform, amc, haq, dqn"):
        make_controller("ddqn", space, PPOConfig(), 0)
