"""HiReLC: its equations in closed form, blocks and Fisher sensitivity, the proxy and surrogate, the
controller over cycles against a synthetic device (exact resume, the surrogate taking over), its bad
inputs, and a whole `hadmc search` with controllers = ["hirelc"] on a real agent."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from host.compress.policy import GRANULARITIES, LayerAction, Policy, granularities_of, validate
from host.compress.prune import layer_limits
from host.models import build_model
from host.search.evaluate import EpisodeResult
from host.search.hirelc import equations as eq
from host.search.hirelc.agents import LayerBudget
from host.search.hirelc.blocks import Block, find_blocks, fisher_sensitivity
from host.search.hirelc.controller import TYPES, HiReLCConfig, HiReLCController, HiReLCStart, check_allowed_drop
from host.search.hirelc.proxy import AccuracySurrogate, LogitProxy, compressed_weight, kernel_features
from host.search.loop import Recorder, RewardReference, one_by_one, run_episodes
from host.search.reward import RewardConfig
from host.search.run import load_search_config, run_search
from host.search.space import SearchSpace, describe_layers
from lut_store.precision import Precision
from lut_store.tomlfile import ConfigError

FP32, FP16, INT8, INT4 = Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4W


# ---- the equations in closed form ----


def test_retained_fraction_and_compression_ratio_eq_21_22():
    assert eq.retained_fraction(8, 0.5) == pytest.approx(0.125)
    assert eq.retained_fraction(32, 1.0) == 1.0
    # Two kernels, 100 and 300 parameters, at 1/8 and 1/4: rho = (12.5 + 75) / 400, CR = 400 / 87.5.
    assert eq.weighted_fraction([100, 300], [1 / 8, 1 / 4]) == pytest.approx(87.5 / 400)
    assert eq.compression_ratio([100, 300], [1 / 8, 1 / 4]) == pytest.approx(400 / 87.5)
    with pytest.raises(ValueError, match="bits = 0"):
        eq.retained_fraction(0, 0.5)
    with pytest.raises(ValueError, match="keep_ratio = 1.5"):
        eq.retained_fraction(8, 1.5)


def test_sensitivity_penalty_eq_10():
    assert eq.sensitivity_penalty(0.8, 0.25) == pytest.approx(0.6)
    assert eq.sensitivity_penalty(0.0, 0.1) == 0.0  # an insensitive block costs nothing
    assert eq.sensitivity_penalty(1.0, 1.0) == 0.0  # nor does an uncompressed one
    with pytest.raises(ValueError, match="sensitivity 1.5"):
        eq.sensitivity_penalty(1.5, 0.5)


def test_low_level_reward_terms_eq_9_25_27():
    assert eq.accuracy_reward(0.0, 0.02) == 1.0
    assert eq.accuracy_reward(0.01, 0.02) == pytest.approx(0.75)
    assert eq.accuracy_reward(0.02, 0.02) == pytest.approx(0.5)
    assert eq.accuracy_reward(0.03, 0.02) == pytest.approx(0.0)
    assert eq.accuracy_reward(0.04, 0.02) == pytest.approx(-0.5)
    assert eq.accuracy_reward(1.0, 0.02) == -1.0  # the floor
    assert eq.accuracy_reward(-0.01, 0.02) == 1.0  # a gain is no drop
    assert eq.budget_reward(0.3, 0.2) == pytest.approx(math.exp(-0.5))
    assert eq.stability([1.0]) == 0.0 and eq.stability([0, 2]) == pytest.approx(1.0)
    assert eq.stability([9, 9, 0, 2, 0, 2, 0]) == pytest.approx(np.std([0, 2, 0, 2, 0]))  # the last five
    step = eq.BlockStep(drop=0.01, allowed_drop=0.02, fraction=0.25, target=0.25, sensitivity=0.4, latency_gain=0.5)
    alpha, beta, gamma, delta = 1.5, 0.5, 1.0, 0.1
    expected = alpha * 0.75 + beta * 0.75 + gamma * 1.0 - delta * 1.0 - 0.4 * 0.75 + 0.2 * 0.5
    assert eq.lla_reward((alpha, beta, gamma, delta), step, [0.0, 2.0], 0.2) == pytest.approx(expected)
    # Latency weight 0: the paper's reward.
    assert eq.lla_reward((1, 1, 1, 0), step, []) == pytest.approx(0.75 + 0.75 + 1.0 - 0.3)


def test_high_level_reward_eq_11_12():
    # Feedback (Eq. 12): over budget, compressing further costs, relaxing earns; within budget and
    # above the target, compressing further earns.
    assert eq.cycle_feedback(0.2, 0.3, 0.05, 0.02, 0.25) == -1.0
    assert eq.cycle_feedback(0.35, 0.3, 0.05, 0.02, 0.25) == 0.5
    assert eq.cycle_feedback(0.2, 0.3, 0.01, 0.02, 0.25) == 0.5
    assert eq.cycle_feedback(0.2, 0.22, 0.01, 0.02, 0.25) == 0.0
    # Alignment: a sensitive block kept conservative earns 2 S, an insensitive one compressed 1 - S.
    assert eq.sensitivity_alignment([0.9, 0.1, 0.5], [0.5, 0.125, 0.125], 0.25) == pytest.approx((1.8 + 0.9) / 3)
    targets, params = [0.5, 0.125], [100, 300]
    mean = (50 + 37.5) / 400
    expected = -np.std(targets) + (1.8 + 0.9) / 2 - abs(mean - 0.25) + 0.5 * 0.5
    weights = (1.0, 1.0, 1.0, 0.5)
    assert eq.hla_reward([0.9, 0.1], targets, params, 0.25, 1.0, 0.0, 0.02, weights) == pytest.approx(expected)


def test_tier_correction_and_interpolation_eq_6_8():
    assert eq.corrected_tier(2, 0.9) == 1 and eq.corrected_tier(2, 0.1) == 3 and eq.corrected_tier(2, 0.5) == 2
    assert eq.corrected_tier(0, 0.9) == 0 and eq.corrected_tier(4, 0.1) == 4  # within the five tiers
    assert eq.interpolate(0, 8, 4, 32) == 4 and eq.interpolate(7, 8, 4, 32) == 32
    assert eq.interpolate(2, 5, 0.2, 1.0) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="index 8 outside 0..7"):
        eq.interpolate(8, 8, 4, 32)


def test_vote_eq_16_and_confidence_weights_eq_17():
    # Ordinal dimensions: the weighted mean, rounded; nominal: the weighted plurality.
    actions = [[1, 0], [2, 1], [4, 1]]
    assert eq.vote(actions, [1 / 3] * 3, [True, False]) == [2, 1]  # mean 7/3 -> 2
    assert eq.vote(actions, [0.0, 0.0, 1.0], [True, False]) == [4, 1]
    assert eq.vote([[0], [1]], [0.5, 0.5], [False]) == [0]  # a tie goes to the smaller index
    assert eq.vote([[1], [2]], [0.5, 0.5], [True]) == [2]  # 1.5 rounds half up
    with pytest.raises(ValueError, match="positive sum"):
        eq.vote(actions, [0, 0, 0], [True, False])
    with pytest.raises(ValueError, match="one weight per member"):
        eq.vote(actions, [1.0], [True, False])
    w = eq.confidence_weights([1.0, 0.0], 0.5)
    assert w[0] == pytest.approx(math.exp(2) / (math.exp(2) + 1)) and sum(w) == pytest.approx(1.0)
    assert eq.confidence_weights([3.0, 3.0, 3.0], 1.0) == pytest.approx([1 / 3] * 3)


# ---- blocks and Fisher sensitivity ----


def _space(model: nn.Module, name: str, example: torch.Tensor, precisions=(FP32, FP16, INT8, INT4)) -> SearchSpace:
    return SearchSpace(name, describe_layers(model, example, layer_limits(model, example)), precisions)


def test_blocks_follow_each_models_units():
    expect = {
        "resnet18": (
            ["conv1", *[f"layer{s}.{b}" for s in range(1, 5) for b in range(2)], "fc"],
            {"layer2.0": ["layer2.0.downsample.0", "layer2.0.conv1", "layer2.0.conv2"]},  # execution order
        ),
        "vit": (None, {"blocks.0": ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.0", "blocks.0.mlp.2"]}),
        "mobilenetv2": (None, {"features.2": ["features.2.block.0.0", "features.2.block.1.0", "features.2.block.2.0"]}),
    }
    for name, (names, members) in expect.items():
        shape = (3, 64, 64)
        model = build_model(name, 6, shape).eval()
        space = _space(model, name, torch.zeros((1, *shape)))
        blocks = find_blocks(model, space)
        assert [k for b in blocks for k in b.kernels] == [layer.name for layer in space.layers]  # each kernel once
        if names:
            assert [b.name for b in blocks] == names
        by_name = {b.name: b for b in blocks}
        for block, kernels in members.items():
            assert list(by_name[block].kernels) == kernels
        assert all(
            b.params == tuple(space.layers[[x.name for x in space.layers].index(k)].params for k in b.kernels)
            for b in blocks
        )


def test_a_single_block_model_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    example = torch.zeros((1, 4))
    space = _space(model, "one", example)
    with pytest.raises(ValueError, match="is a single block .*search it with ppo"):
        find_blocks(model, space)


def test_fisher_sensitivity_eq_14_15_in_closed_form():
    """Two bias-free linear layers: per-sample gradients of the cross-entropy are outer products,
    dL/dW2 = (p - y) h^T and dL/dW1 = (W2^T (p - y)) x^T with h = W1 x."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False))
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    blocks = [Block("first", ("0",), (12,)), Block("second", ("1",), (8,))]
    w1, w2 = model[0].weight.detach().double(), model[1].weight.detach().double()
    f1 = torch.zeros_like(w1)
    f2 = torch.zeros_like(w2)
    for xi, yi in zip(x.double(), y, strict=True):
        h = w1 @ xi
        e = torch.softmax(w2 @ h, 0) - nn.functional.one_hot(yi, 2).double()
        f2 += torch.outer(e, h) ** 2
        f1 += torch.outer(w2.T @ e, xi) ** 2
    totals = {"first": float(f1.sum()) / 5, "second": float(f2.sum()) / 5}
    top = max(totals.values())
    got = fisher_sensitivity(model, [(x, y)], blocks, samples=5)
    assert got == pytest.approx({k: v / top for k, v in totals.items()}, rel=1e-5)
    assert max(got.values()) == 1.0
    # Fewer samples than the batch: only the first ones count.
    first_two = fisher_sensitivity(model, [(x, y)], blocks, samples=2)
    assert first_two != pytest.approx(got)
    assert model[0].weight.grad is None and model[0].weight.requires_grad  # left as it was
    with pytest.raises(ValueError, match="0 calibration sample"):
        fisher_sensitivity(model, [], blocks, samples=5)


# ---- the proxy and the surrogate ----


def test_compressed_weight_masks_the_weakest_channels_then_rounds():
    w = torch.tensor([[3.0, 0.0], [0.1, 0.1], [1.0, 1.0], [0.2, -0.3]])
    out = compressed_weight(w, LayerAction(0.5, FP32), round_to=1)
    assert out[1].abs().sum() == 0 and out[3].abs().sum() == 0 and torch.equal(out[[0, 2]], w[[0, 2]])
    int4 = compressed_weight(w, LayerAction(1.0, INT4), round_to=1)
    levels = int4 / (w.abs().amax(dim=1, keepdim=True) / 7)
    assert torch.allclose(levels, levels.round(), atol=1e-5) and levels.abs().max() <= 7


def test_logit_proxy_is_zero_uncompressed_and_restores_the_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    before = [p.detach().clone() for p in model.parameters()]
    proxy = LogitProxy(model, torch.randn(32, 6), round_to=1)
    assert proxy({"0": LayerAction(1.0, FP32)}) == 0.0
    light, heavy = proxy({"0": LayerAction(1.0, INT8)}), proxy({"0": LayerAction(0.25, INT4)})
    assert 0 < light < heavy
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("name", ["resnet18", "vit"])
def test_the_proxy_replays_only_downstream_and_gets_the_full_forwards_numbers(name):
    torch.manual_seed(0)
    shape = (3, 64, 64)
    model = build_model(name, 6, shape).eval()
    names = [lim.name for lim in layer_limits(model, torch.zeros((1, *shape)))]
    x = torch.randn(4, *shape)
    proxy = LogitProxy(model, x, round_to=8)
    assert proxy.replay is not None  # traced: replayed from the first changed kernel
    for kernel in (names[0], names[len(names) // 2], names[-2]):
        action = {kernel: LayerAction(0.5, INT4, "log")}
        with torch.no_grad():
            weight = dict(model.named_modules())[kernel].weight
            original = weight.clone()
            weight.copy_(compressed_weight(weight, action[kernel], 8))
            full = model(x)
            weight.copy_(original)
        expected = float((full - proxy.reference).pow(2).mean()) / proxy.scale
        assert proxy(action) == pytest.approx(expected, rel=1e-6) and expected > 0
        assert torch.equal(dict(model.named_modules())[kernel].weight, original)


def test_surrogate_waits_for_its_threshold_then_learns_the_trend():
    names = ["a", "b"]
    surrogate = AccuracySurrogate(names, min_samples=3, seed=0)
    assert kernel_features(LayerAction(0.5, INT4, "uniform")) == [4 / 32, 0.5, 0.0, 0.0, 1.0]
    assert kernel_features(LayerAction(0.5, INT4, "learned")) == [4 / 32, 0.5, 0.0, 1.0, 1.0]
    assert kernel_features(LayerAction(1.0, FP16)) == [0.5, 1.0, 1.0, 2 / 3, 0.0]  # per-channel: index 2 of 0..3
    for keep in (0.2, 0.5, 0.8):
        surrogate.add({n: LayerAction(keep, INT8) for n in names}, 0.5 + 0.5 * keep)
        assert surrogate.active == (keep == 0.8)
    low, high = (surrogate({n: LayerAction(k, INT8) for n in names}) for k in (0.3, 0.7))
    assert low < high
    again = AccuracySurrogate(names, min_samples=3, seed=0)
    again.load_state_dict(surrogate.state_dict())
    assert again({n: LayerAction(0.3, INT8) for n in names}) == low  # refit from the buffer, bit for bit


# ---- the controller over cycles, on a synthetic device ----

QUICK = HiReLCConfig(lla_timesteps=10, hla_timesteps=20, hla_burst=10, lla_steps=5, hla_steps=5, surrogate_min=2)


def _mlp_setup(config: HiReLCConfig = QUICK, precisions=(FP32, FP16, INT8, INT4), cycles: int = 4):
    torch.manual_seed(0)
    model = build_model("mlp", 3, (10,)).eval()
    example = torch.zeros((1, 10))
    space = _space(model, "mlp", example, precisions)
    blocks = find_blocks(model, space)
    x, y = torch.randn(16, 10), torch.randint(0, 3, (16,))
    sensitivity = fisher_sensitivity(model, [(x, y)], blocks, 16)

    def latency_ms(policy: Policy) -> float:
        return sum(a.keep_ratio * a.precision.weight_bits / 32 for a in policy.layers.values()) + 0.1

    start = HiReLCStart(config, blocks, sensitivity, LogitProxy(model, x, 1), latency_ms, 3.1, 0.9, cycles)
    return model, space, start


def _device(policy: Policy, episode: int) -> EpisodeResult:
    """Accuracy falls with pruning and with int4; latency follows bits and channels."""
    keeps = [a.keep_ratio for a in policy.layers.values()]
    int4 = sum(a.precision is INT4 for a in policy.layers.values())
    acc = 0.9 - 0.2 * (1 - float(np.mean(keeps))) - 0.02 * int4
    latency = sum(a.keep_ratio * a.precision.weight_bits / 32 for a in policy.layers.values()) + 0.1
    return EpisodeResult(acc, latency, 1000, 1000, (), 0)


def _run(controller: HiReLCController, episodes: int, start: int = 0) -> list[str]:
    """Episodes start .. episodes - 1 on the synthetic device; their policies."""
    done = run_episodes(controller, one_by_one(_device), episodes, RewardReference(3.1, 4000), RewardConfig(), start)
    return [e.policy.to_json() for e in done]


def test_cycles_propose_valid_policies_and_the_surrogate_takes_over():
    model, space, start = _mlp_setup()
    controller = HiReLCController(space, start, seed=0)
    limits = layer_limits(model, torch.zeros((1, 10)))
    for text in _run(controller, 4):
        policy = Policy.from_json(text)
        validate(policy, "mlp", limits)
        assert policy.layers["head"].keep_ratio == 1.0  # the classifier keeps its width
    cycle = controller.notes["hirelc"]
    assert cycle.cycle == 3 and cycle.estimator == "surrogate" and cycle.replay_buffer == 4
    assert cycle.surrogate_mae is not None and cycle.surrogate_accuracy is not None
    assert set(cycle.block_targets) == {"body.0", "body.2", "head"}
    assert cycle.compression_ratio == pytest.approx(1 / cycle.retained_fraction)
    assert set(cycle.block_strategies.values()) <= {"auto", "pruning", "quantization"}


def test_a_resumed_controller_repeats_the_uninterrupted_cycles():
    _, space, start = _mlp_setup()
    straight = _run(HiReLCController(space, start, seed=3), 4)
    first = HiReLCController(space, start, seed=3)
    _run(first, 2)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # the checkpoint's format: tensors and plain values only
    buffer.seek(0)
    _, space, start = _mlp_setup()
    resumed = HiReLCController(space, start, seed=3)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert _run(resumed, 4, start=2) == straight[2:]
    assert len(set(straight)) > 1  # the cycles do search


def test_a_batch_is_one_cycle_its_consensus_then_draws_and_resumes_whole():
    """parallel_episodes = 3: each batch is one cycle (the consensus, then two draws from the same
    ensembles); every outcome trains the surrogate, the consensus's is the feedback; a run killed
    after its first batch resumes to the same episodes."""
    _, space, start = _mlp_setup(cycles=2)
    controller = HiReLCController(space, start, seed=5)
    cycles, outcomes = [], []

    def seen(episode) -> None:
        cycles.append(controller.notes["hirelc"].cycle)
        outcomes.append(episode.result.val_accuracy)

    def run(c: HiReLCController, episodes: int, first: int = 0, record: Recorder | None = None) -> list[str]:
        done = run_episodes(
            c, one_by_one(_device), episodes, RewardReference(3.1, 4000), RewardConfig(), first, record, parallel=3
        )
        return [e.policy.to_json() for e in done]

    straight = run(controller, 6, record=Recorder(seen))
    assert cycles == [0, 0, 0, 1, 1, 1] and controller.cycle == 2
    assert len(set(straight[:3])) == 3 and len(set(straight[3:])) == 3  # the draws differ from the consensus
    assert len(controller.surrogate.buffer) == 6  # every candidate's outcome
    assert controller.feedback.drop == pytest.approx(start.base_accuracy - outcomes[3])  # the consensus's
    first = HiReLCController(space, start, seed=5)
    assert run(first, 3) == straight[:3]
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = HiReLCController(space, start, seed=5)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert run(resumed, 6, first=3) == straight[3:]


def test_granularities_are_chosen_where_the_precision_exports_them():
    _, space, start = _mlp_setup(cycles=2)
    forced = HiReLCController(space, replace(start, config=replace(QUICK, granularity_override="log")), seed=0)
    policy = forced.propose(0)
    assert {(a.precision, a.granularity) for a in policy.layers.values()} == {(INT4, "log")}
    free = HiReLCController(space, start, seed=1)
    for episode in range(2):
        for action in free.propose(episode).layers.values():
            assert action.granularity in granularities_of(action.precision)
        free.observe(1.0, _device(free.open[0][1], episode))


def test_the_float_type_at_8_bits_is_fp8_where_the_device_runs_it():
    """A kernel's (bit level, type, granularity) decodes to the nearest precision of that type: at 8
    bits FLOAT is fp8 (uniform or per-channel as chosen; a log choice falls back to the default)
    and INT is int8; without fp8, FLOAT at 8 bits is fp16."""
    eight = LayerBudget(0.25, (8.0, 8.0), (1.0, 1.0), 0.02, "auto")
    float_, int_ = TYPES.index("float"), TYPES.index("int")
    for precisions, floating in (((FP32, FP16, INT8, INT4, Precision.FP8), Precision.FP8), ((FP32, FP16, INT8), FP16)):
        _, space, start = _mlp_setup(precisions=precisions, cycles=1)
        controller = HiReLCController(space, start, seed=0)
        block = start.blocks[0]
        for type_i, gran, expected in (
            (float_, "uniform", (floating, "uniform" if floating is Precision.FP8 else "per-channel")),
            (float_, "log", (floating, "per-channel")),
            (int_, "uniform", (INT8, "uniform")),
        ):
            action = [0, 0, type_i, GRANULARITIES.index(gran)] * len(block.kernels)
            actions, _ = controller._decode(block, action, eight, {})
            assert {(a.precision, a.granularity) for a in actions.values()} == {expected}


def test_ablation_switches_change_the_search():
    _, space, start = _mlp_setup(cycles=1)
    flat = HiReLCController(space, replace(start, config=replace(QUICK, hierarchy=False)), seed=0)
    flat.propose(0)
    assert {b.target for b in flat.budgets} == {0.25} and {b.strategy for b in flat.budgets} == {"auto"}
    blind = HiReLCController(space, replace(start, config=replace(QUICK, sensitivity=False)), seed=0)
    assert blind.sensitivity == [0.0, 0.0, 0.0]
    single = HiReLCController(
        space, replace(start, config=replace(QUICK, lla_members=["ppo"], lla_styles=["moderate"])), seed=0
    )
    assert all(len(e.members) == 1 for e in single.lla)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lla_members": []}, "lla_members is empty"),
        ({"hla_members": ["ppo", "sac"], "hla_styles": ["moderate", "moderate"]}, r"hla_members \['sac'\]"),
        ({"lla_styles": ["bold", "moderate", "aggressive"]}, "one per member .* each one of conservative"),
        ({"vote": "fixed", "vote_weights": [1.0, 1.0]}, "one non-negative weight per LLA member"),
        ({"vote": "fixed", "vote_weights": [0.0, 0.0, 0.0]}, "positive sum"),
        ({"vote": "median"}, "vote 'median'"),
        ({"granularity_override": "cubic"}, "granularity_override 'cubic': choose among uniform, log, per-channel"),
        ({"type_override": "posit"}, "type_override 'posit'"),
        ({"max_drop": 0.0}, "max_drop 0.0"),
        ({"target_compression": 0.5}, "target_compression 0.5"),
    ],
)
def test_bad_settings_are_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        load_search_config(None, {"search": {"controllers": ["hirelc"]}, "hirelc": changes})


def test_an_allowed_drop_the_folded_model_already_exceeds_is_refused():
    check_allowed_drop(0.95, 0.94, 0.02)
    with pytest.raises(ValueError, match=r"already loses 0.0300 validation accuracy \(0.9500 -> 0.9200\): raise"):
        check_allowed_drop(0.95, 0.92, 0.02)


def test_what_the_device_cannot_meet_is_refused():
    _, int_only, start = _mlp_setup(precisions=(INT8,))
    with pytest.raises(ValueError, match="type_override 'float': the device runs no float precision here"):
        HiReLCController(int_only, replace(start, config=replace(QUICK, type_override="float")), seed=0)
    _, space, start = _mlp_setup(precisions=(FP32, INT8))
    with pytest.raises(ValueError, match="granularity_override 'log' needs int4, which the device does not run here"):
        HiReLCController(space, replace(start, config=replace(QUICK, granularity_override="log")), seed=0)
    with pytest.raises(ValueError, match=r"target_compression 40.0 is out of reach: .* compresses 20.00x"):
        HiReLCController(space, replace(start, config=replace(QUICK, target_compression=40.0)), seed=0)


# ---- a whole search on a real agent ----


def test_a_hirelc_search_runs_end_to_end(agent, tmp_path, monkeypatch):
    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    config = load_search_config(
        None,
        {
            "model": "mlp",
            "data": {"name": "breast-cancer"},
            "device": {"name": agent.address},
            "store": f"sqlite:///{tmp_path / 'lut.sqlite'}",
            "search": {"controllers": ["hirelc", "random"], "episodes": 2, "episode_samples": 64, "alternatives": []},
            "baseline": {"epochs": 2},
            "final_distill": {"epochs": 1},
            "hirelc": {"lla_timesteps": 10, "hla_timesteps": 20, "hla_burst": 10, "surrogate_min": 1},
        },
    )
    out = tmp_path / "run"
    summary = run_search(config, out, progress=False)
    rows = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    cycles = [r["hirelc"] for r in rows if r["controller"] == "hirelc"]
    assert [c["cycle"] for c in cycles] == [0, 1] and [c["estimator"] for c in cycles] == ["logit-mse", "surrogate"]
    assert cycles[1]["surrogate_mae"] is not None and cycles[1]["replay_buffer"] == 2
    assert all(c["compression_ratio"] > 1 for c in cycles)
    assert all(r["hirelc"] is None for r in rows if r["controller"] == "random")
    final = summary.controllers["hirelc"]
    assert (out / final.onnx).exists() and final.measured_latency is not None
    assert final.storage_compression_ratio > 1 and summary.controllers["random"].storage_compression_ratio > 1
    assert (out / "plots" / "hirelc_budgets.png").exists() and "HiReLC: budgets" in (out / "report.html").read_text()
