"""PPO's warm start without a device: the damage model, the greedy allocation of the LUT's
milliseconds, behaviour cloning onto a proposal, the controller playing its proposals first and
resuming across them, and fastest-within's candidate pool (a real search: test_search.py)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from host.compress.policy import LayerAction, Policy
from host.compress.prune import layer_limits
from host.models import build_model
from host.runs import EpisodeRow
from host.search.allocate import Damage, allocate, grouped_policy, groups_of, proposal_keeps, proposals
from host.search.budget import LatencyEstimator
from host.search.evaluate import EpisodeResult
from host.search.loop import RewardReference, one_by_one, run_episodes
from host.search.ppo import PPOConfig
from host.search.registry import PPOStart, make_controller
from host.search.reward import RewardConfig
from host.search.select import fastest_candidates
from host.search.space import ParamCounter, SearchSpace, describe_layers
from lut_store.precision import Precision

FP32, INT8 = Precision.FP32, Precision.INT8
SHAPE = (3, 64, 64)


@functools.cache
def _resnet() -> tuple[SearchSpace, ParamCounter]:
    net = build_model("resnet18", 6, SHAPE)
    example = torch.zeros((1, *SHAPE))
    space = SearchSpace("resnet18", describe_layers(net, example, layer_limits(net, example)), (FP32, INT8))
    return space, ParamCounter(net, example)


def _estimator(space: SearchSpace, counter: ParamCounter, ms_of: dict[str, float]) -> LatencyEstimator:
    """Each layer's int8 kernel at `ms_of[layer]` ms unpruned (fp32: twice that), proportional to its kept work."""
    names = [layer.name for layer in space.layers]
    full = {INT8: {n: ms_of.get(n, 0.1) for n in names}, FP32: {n: 2 * ms_of.get(n, 0.1) for n in names}}
    return LatencyEstimator(counter, full, {p: dict.fromkeys(names, 1.0) for p in full}, 0.0)


def _damage(space: SearchSpace, kl_of: dict[str, tuple[float, float]]) -> Damage:
    return Damage((0.55, 0.2), {g: kl_of.get(g, (0.01, 0.05)) for g in groups_of(space)})


def test_the_damage_model_passes_through_its_measurements_and_is_zero_unpruned():
    damage = Damage((0.55, 0.2), {"a": (0.02, 0.1), "b": (0.0, 0.0), "c": (0.05, 0.01)})
    assert damage.at("a", 1.0) == 0.0
    assert damage.at("a", 0.55) == pytest.approx(0.02) and damage.at("a", 0.2) == pytest.approx(0.1)
    assert damage.at("a", 0.9) < damage.at("a", 0.7) < damage.at("a", 0.55)  # grows as channels go
    assert damage.at("b", 0.2) == pytest.approx(0.0, abs=1e-8)  # a harmless group costs nothing
    # Measured less damaged at keep 0.2 than at 0.55 (noise): at least linear, never falling.
    assert damage.at("c", 0.2) >= damage.at("c", 0.55) == pytest.approx(0.05)
    assert damage.total({"a": 0.55, "b": 0.2}) == pytest.approx(0.02)


@pytest.mark.parametrize(
    "keeps, kl",
    [((0.55,), {"a": (0.1,)}), ((0.2, 0.55), {"a": (0.1, math.nan)}), ((0.55, 0.2), {"a": (-0.1, 0.2)})],
)
def test_a_malformed_damage_record_is_refused(keeps, kl):
    with pytest.raises(ValueError, match="damage"):
        Damage(keeps, kl)


def test_the_allocation_prunes_where_milliseconds_are_cheap_in_damage():
    space, counter = _resnet()
    groups = groups_of(space)
    cheap, dear = groups[-1], groups[0]  # the last stage's residual group costs little accuracy
    damage = _damage(space, {cheap: (0.001, 0.004), dear: (0.2, 2.0)})
    estimator = _estimator(space, counter, {})
    for keep in (0.65, 0.55, 0.45):
        budget = damage.total(dict.fromkeys(groups, keep))
        policy = allocate(space, estimator, damage, budget)
        chosen = {g: policy.layers[g].keep_ratio for g in groups}
        uniform = grouped_policy(space, dict.fromkeys(groups, keep), [INT8] * len(space.layers))
        # No more modelled damage than the uniform policy, and no slower by the LUT.
        assert damage.total(chosen) <= budget + 1e-12
        assert estimator(policy) <= estimator(uniform)
        assert chosen[cheap] < chosen[dear]
        assert {a.precision for a in policy.layers.values()} == {INT8}  # every layer at its fastest
    # No budget to spend: nothing is pruned beyond the range's top.
    none = allocate(space, estimator, damage, damage.total(dict.fromkeys(groups, space.max_keep)))
    assert {none.layers[g].keep_ratio for g in groups} == {space.max_keep}


def test_proposals_spend_uniform_damage_from_the_middle_of_the_range_up():
    space, counter = _resnet()
    assert proposal_keeps(space, 3) == [0.75, 0.65, 0.55]
    assert proposal_keeps(space, 1) == [0.55]
    made = proposals(space, _estimator(space, counter, {}), _damage(space, {}), proposal_keeps(space, 3))
    estimator = _estimator(space, counter, {})
    assert estimator(made[0]) > estimator(made[1]) > estimator(made[2])  # safest first


def _result(acc: float, latency_ms: float = 1.0) -> EpisodeResult:
    return EpisodeResult(acc, latency_ms, 0, 100, (), 0)


def test_ppo_plays_its_proposals_then_starts_from_the_best_and_resumes_across_them(tmp_path):
    space, counter = _resnet()
    estimator = _estimator(space, counter, {})
    made = proposals(space, estimator, _damage(space, {}), proposal_keeps(space, 3))
    accuracy = [0.5, 0.9, 0.7]  # the middle proposal is the best

    def evaluate(policy: Policy, episode: int) -> EpisodeResult:
        return _result(accuracy[made.index(policy)] if policy in made else 0.6, estimator(policy))

    base, w = RewardReference(1.0, 100), RewardConfig(latency_weight=0.0, size_weight=0.0)
    config = PPOConfig(init_log_std=-3.0)  # a narrow spread: its mean shows where it starts
    straight = run_episodes(
        make_controller("ppo", space, config, 5, start=PPOStart(proposals=made)), one_by_one(evaluate), 5, base, w
    )
    assert [e.policy for e in straight[:3]] == made
    best = {g: made[1].layers[g].keep_ratio for g in groups_of(space)}
    after = {g: straight[3].policy.layers[g].keep_ratio for g in groups_of(space)}
    assert max(abs(after[g] - best[g]) for g in best) < 0.06  # the agent starts where the best proposal is
    assert straight[3].policy != made[1]  # ... and samples around it

    first = make_controller("ppo", space, config, 5, start=PPOStart(proposals=made))
    seen = run_episodes(first, one_by_one(evaluate), 2, base, w)  # killed in the middle of the warm start
    torch.save(first.state_dict(), tmp_path / "ppo.pt")
    resumed = make_controller("ppo", space, config, 5)  # the proposals come from the checkpoint
    resumed.load_state_dict(torch.load(tmp_path / "ppo.pt", weights_only=True))
    seen += run_episodes(resumed, one_by_one(evaluate), 5, base, w, start_episode=2)
    assert [e.policy for e in seen] == [e.policy for e in straight]


def _row(episode: int, latency_ms: float, accuracy: float, keep: float) -> EpisodeRow:
    policy = Policy("mlp", {"a": LayerAction(keep, INT8), "b": LayerAction(1.0, INT8)})
    return EpisodeRow("ppo", episode, policy, latency_ms, accuracy, 100, 100, 1.0, (1,), 1.0)


def test_fastest_within_candidates_are_the_fastest_accurate_episodes():
    rows = [
        _row(0, 0.2, 0.80, 0.2),  # the fastest, but far less accurate than the best episode
        _row(1, 0.5, 0.95, 0.5),
        _row(2, 0.4, 0.94, 0.4),
        _row(3, 0.4, 0.94, 0.4),  # a repeat of episode 2's policy
        _row(4, 0.9, 0.96, 0.9),
        _row(5, 0.3, 0.90, 0.3),
    ]
    # The two fastest within two points of the best episode, then the most accurate other one.
    assert [r.episode for r in fastest_candidates(rows, 3, 0.02)] == [2, 1, 4]
    assert [r.episode for r in fastest_candidates(rows, 2, 0.02)] == [2, 4]
    # Too few within the slack: the most accurate of the others make up the number.
    assert [r.episode for r in fastest_candidates(rows, 5, 0.02)] == [2, 1, 4, 5, 0]
    # A dominated episode (slower and less accurate than episode 2) comes last, however accurate:
    # it would take the place of a faster policy that is at least as good.
    rows.append(_row(6, 0.45, 0.935, 0.45))
    assert [r.episode for r in fastest_candidates(rows, 6, 0.02)] == [2, 1, 4, 5, 0, 6]
    # A ResNet18 search here: episode 8 took the place of episode 2's 0.38 ms policy.
    warm = [_row(0, 0.65, 0.972, 0.85), _row(1, 0.47, 0.934, 0.75), _row(2, 0.38, 0.92, 0.6), _row(8, 0.88, 0.93, 0.7)]
    assert [r.episode for r in fastest_candidates(warm, 3, 0.02)] == [0, 1, 2]  # not 8: episode 1 is faster and better
