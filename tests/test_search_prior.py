"""What the LUT tells the search before its first episode, and how a controller's final policy is
chosen: dominated precisions dropped per layer, the speed prior, masks every controller obeys,
and selection among the best episodes at a common fine-tune (closed-form, no device)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from host.compress.distill import DistillConfig
from host.compress.policy import LayerAction, Policy
from host.models import build_model
from host.runs import EpisodeRow, SelectionFloor
from host.search.budget import LatencyEstimator
from host.search.controllers import walk
from host.search.loop import RewardReference
from host.search.ppo import PPOConfig
from host.search.prior import dropped, lut_choices
from host.search.registry import make_controller
from host.search.reward import RewardConfig
from host.search.select import SelectConfig, Selection, candidates, fastest_unpruned, select
from host.search.space import ParamCounter, SearchSpace, describe_layers
from lut_store.precision import Precision

FP32, FP16, INT8, INT4 = Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4W


def _mlp() -> tuple[SearchSpace, ParamCounter]:
    net = build_model("mlp", 2, (30,))
    example = torch.zeros((1, 30))
    return SearchSpace("mlp", describe_layers(net, example), (FP32, FP16, INT8, INT4)), ParamCounter(net, example)


def _estimator(space: SearchSpace, counter: ParamCounter, ms: dict[Precision, tuple[float, ...]]) -> LatencyEstimator:
    """Per precision, each layer's ms unpruned; every layer's latency is proportional to its kept work."""
    names = [layer.name for layer in space.layers]
    full = {p: dict(zip(names, v, strict=True)) for p, v in ms.items()}
    return LatencyEstimator(counter, full, {p: dict.fromkeys(names, 1.0) for p in ms}, 0.0)


# A CPU provider: int8 fastest; fp16 is casts around fp32 kernels (slower), int4 is dequantized every run.
CPU = {FP32: (1.0, 2.0, 0.1), FP16: (1.2, 2.3, 0.12), INT8: (0.3, 0.5, 0.1), INT4: (1.5, 2.9, 0.2)}


def test_a_latency_search_drops_what_is_slower_and_less_precise():
    space, counter = _mlp()
    narrowed = lut_choices(space, _estimator(space, counter, CPU), counter, size_matters=False)
    # Layers 0 and 1: int8 is faster, fp32 more precise; fp16 and int4 lose to fp32 on both counts.
    # The last layer: int8 runs as fast as fp32 (0.1 ms each), so the more precise fp32 dominates it.
    assert narrowed.allowed == ((INT8, FP32), (INT8, FP32), (FP32,))
    assert narrowed.speed[0] == pytest.approx((0.3, 0.0, 1.0, 0.0))  # fastest allowed / own; 0: ruled out
    assert dropped(narrowed) == {
        narrowed.layers[0].name: ["fp16", "int4"],
        narrowed.layers[1].name: ["fp16", "int4"],
        narrowed.layers[2].name: ["fp16", "int8", "int4"],
    }


def test_when_size_counts_a_smaller_precision_stays_and_a_device_with_fp16_kernels_keeps_fp16():
    space, counter = _mlp()
    sized = lut_choices(space, _estimator(space, counter, CPU), counter, size_matters=True)
    assert INT4 in sized.allowed[0] and FP16 in sized.allowed[0]  # smaller than fp32, so not dominated by it
    gpu = {FP32: (1.0, 1.0, 1.0), FP16: (0.4, 0.4, 0.4), INT8: (0.35, 0.35, 0.35), INT4: (0.9, 0.9, 0.9)}
    narrowed = lut_choices(space, _estimator(space, counter, gpu), counter, size_matters=False)
    assert narrowed.allowed[0] == (INT8, FP16, FP32)  # int8 is 12% faster than fp16, fp16 more precise: both stay


def test_fp8_stays_only_where_it_is_faster_than_int8_even_when_size_counts():
    """fp8 stores as many bits as int8: dequantized every run (a CPU provider) it is dominated
    wherever int8 runs; on a device whose FP8 kernels beat int8 it stays."""
    net = build_model("mlp", 2, (30,))
    example = torch.zeros((1, 30))
    space = SearchSpace("mlp", describe_layers(net, example), (FP32, INT8, Precision.FP8))
    counter = ParamCounter(net, example)
    cpu = {FP32: CPU[FP32], INT8: CPU[INT8], Precision.FP8: (1.4, 2.7, 0.19)}
    sized = lut_choices(space, _estimator(space, counter, cpu), counter, size_matters=True)
    assert all(Precision.FP8 not in allowed for allowed in sized.allowed)
    fp8_kernels = {FP32: (1.0, 1.0, 1.0), INT8: (0.5, 0.5, 0.5), Precision.FP8: (0.3, 0.3, 0.3)}
    kept = lut_choices(space, _estimator(space, counter, fp8_kernels), counter, size_matters=True)
    assert all(allowed[0] is Precision.FP8 for allowed in kept.allowed)


def test_every_controller_keeps_to_the_allowed_precisions():
    space, counter = _mlp()
    narrowed = lut_choices(space, _estimator(space, counter, CPU), counter, size_matters=False)
    for name in ("ppo", "random", "uniform", "dqn"):
        controller = make_controller(name, narrowed, PPOConfig(), seed=3)
        for episode in range(6):
            policy = controller.propose(episode)
            chosen = [policy.layers[layer.name].precision for layer in narrowed.layers]
            assert all(p in allowed for p, allowed in zip(chosen, narrowed.allowed, strict=True)), (name, chosen)
            controller.observe(1.0)


def test_ppo_starts_from_the_luts_favourite():
    space, counter = _mlp()
    narrowed = lut_choices(space, _estimator(space, counter, CPU), counter, size_matters=False)
    picks = {name: [] for name in ("prior", "none")}
    for label, strength in (("prior", 2.0), ("none", 0.0)):
        for seed in range(20):
            controller = make_controller("ppo", narrowed, PPOConfig(prior_strength=strength), seed)
            policy = controller.propose(0)
            picks[label].append(policy.layers[narrowed.layers[0].name].precision is INT8)
    # int8 is the fastest at the first layer: sigmoid(2 * (1 - 0.3)) = 0.80 of the draws, against about half.
    assert np.mean(picks["prior"]) > np.mean(picks["none"]) + 0.15


def _row(episode: int, reward: float, latency_ms: float, keep: float) -> EpisodeRow:
    policy = Policy("mlp", {"a": _action(keep), "b": _action(1.0)})
    return EpisodeRow("ppo", episode, policy, latency_ms, 0.9, 100, 100, reward, (1,), 1.0)


def _action(keep: float) -> LayerAction:
    return LayerAction(keep, INT8)


def test_candidates_are_the_best_distinct_policies():
    rows = [_row(0, 1.0, 1.0, 0.5), _row(1, 3.0, 0.5, 0.3), _row(2, 3.0, 0.5, 0.3), _row(3, 2.0, 0.7, 0.4)]
    assert [r.episode for r in candidates(rows, 2)] == [1, 3]  # episode 2 repeats episode 1's policy


def test_fastest_within_picks_the_fastest_policy_close_enough_to_the_most_accurate(monkeypatch, tmp_path):
    from host.search import select as module

    # keep -> (accuracy after the common fine-tune, measured speedup); episode 0's prediction was the
    # fastest, but the device measures episode 1's policy faster.
    measured = {0.3: (0.930, 9.0), 0.4: (0.952, 8.5), 0.5: (0.955, 7.0), 0.6: (0.953, 9.5)}
    floor_speedup = {"value": 4.0}  # the unpruned network, measured in the same rounds

    def measure(bench, pool, distill, reference, workdir, floor, floor_onnx):
        scores = {row.episode: measured[row.policy.layers["a"].keep_ratio] for row in pool}
        ours = {episode: module.Measured(a, 0.1, 1.0 / s, s) for episode, (a, s) in scores.items()}
        if floor_onnx is None:
            return ours, None
        return ours, module.Measured(floor.val_accuracy, 0.05, 1.0 / floor_speedup["value"], floor_speedup["value"])

    monkeypatch.setattr(module, "_measure", measure)
    rows = [_row(0, 3.0, 0.5, 0.3), _row(1, 2.5, 0.6, 0.4), _row(2, 2.0, 0.7, 0.5), _row(3, 1.0, 0.9, 0.9)]
    context = Selection(DistillConfig(), RewardConfig(), RewardReference(1.0, 100), tmp_path / "fp32.onnx")
    config = SelectConfig(top=3, rule="fastest-within", max_accuracy_drop=0.005)
    chosen = select(None, rows, config, context, tmp_path)
    assert chosen.episode == 1  # 0.952 is within 0.5 pt of 0.955 and measured faster; 0.930 is not
    assert [(c.episode, c.val_accuracy, c.speedup, c.chosen) for c in chosen.candidates] == [
        (0, 0.930, 9.0, False),
        (1, 0.952, 8.5, True),
        (2, 0.955, 7.0, False),
    ]
    unpruned = Policy("mlp", {"a": _action(1.0), "b": _action(1.0)})

    def against(accuracy: float, exported: bool = False, val_images: int | None = None) -> Selection:
        floor = SelectionFloor(unpruned, accuracy, 0.05, "floor.onnx", 1.5, val_images)
        return replace(context, floor=floor, floor_onnx=tmp_path / "floor.onnx" if exported else None)

    # Against the unpruned network's accuracy at that fidelity: 0.952 is 0.8 pt below 0.960, too far.
    assert select(None, rows, config, against(0.960), tmp_path).episode == 2  # the only one within 0.5 pt of 0.960
    assert select(None, rows, config, against(0.990), tmp_path).episode == 2  # none is within 0.5 pt: the most accurate
    # The unpruned network exported: a candidate itself, chosen when nothing pruned keeps the accuracy
    # (MobileNetV2), and when it is faster than whatever does.
    chosen = select(None, rows, config, against(0.990, exported=True), tmp_path)
    assert chosen.episode is None and chosen.policy == unpruned
    assert [(c.episode, c.chosen) for c in chosen.candidates][-1] == (None, True)
    assert chosen.candidates[-1].predicted_latency_ms == 1.5 and chosen.candidates[-1].episode_val_accuracy is None
    # within: episode 2's 7.0x beats the floor's 4.0x
    assert select(None, rows, config, against(0.960, exported=True), tmp_path).episode == 2
    # None within 0.5 pt of 0.965, but the most accurate (0.955) is short by less than two sd of the
    # difference on 288 images (3.1 pt): it cannot be told from one within, and it runs faster.
    assert select(None, rows, config, against(0.965, exported=True), tmp_path).episode is None  # sd unknown
    assert select(None, rows, config, against(0.965, exported=True, val_images=288), tmp_path).episode == 2
    assert select(None, rows, config, against(0.990, exported=True, val_images=288), tmp_path).episode is None
    floor_speedup["value"] = 7.5
    assert select(None, rows, config, against(0.960, exported=True), tmp_path).episode is None  # the floor runs faster
    rewarded = replace(context, score=RewardConfig(latency_weight=1.0))
    chosen = select(None, rows, SelectConfig(top=3, rule="reward"), rewarded, tmp_path)
    assert chosen.episode == 0  # 0.930 x 9.0 beats 0.952 x 8.5 on acc * L_base / L (measured)
    one = select(None, rows, SelectConfig(top=1), context, tmp_path)
    assert one.episode == 0 and one.candidates == ()  # top 1: the best episode as it is, nothing fine-tuned
    measured[0.4] = (0.955, 8.5)  # as accurate as episode 2's policy, and faster
    # none within: the most accurate, the faster of two equals
    assert select(None, rows, config, against(0.990), tmp_path).episode == 1


def test_candidates_are_measured_in_shared_rounds_each_ending_with_the_reference(tmp_path):
    from pathlib import Path

    from host.device import paired_latencies
    from protos.hadmc.v1 import agent_pb2, common_pb2

    # the reference drifts from 10 to 12 ms over the rounds; candidate a runs at a fifth of it, b at half
    ms = {"a.onnx": [2.0, 2.2, 2.4], "b.onnx": [5.0, 5.5, 6.0], "ref.onnx": [10.0, 11.0, 12.0]}
    calls: list[str] = []

    class Device:
        def benchmark(self, path: Path, batch_size: int = 0) -> agent_pb2.BenchmarkResponse:
            calls.append(path.name)
            median = ms[path.name][sum(c == path.name for c in calls) - 1]
            return agent_pb2.BenchmarkResponse(latency=common_pb2.LatencyStats(median_ms=median, n=10))

    a, b = paired_latencies(Device(), [Path("a.onnx"), Path("b.onnx")], Path("ref.onnx"), rounds=3)
    assert calls == ["a.onnx", "b.onnx", "ref.onnx"] * 3  # one reference run per round, shared
    assert a.speedup == pytest.approx(11.0 / 2.2) and b.speedup == pytest.approx(11.0 / 5.5)
    assert [r.model_ms for r in a.rounds] == [2.0, 2.2, 2.4] and [r.baseline_ms for r in b.rounds] == [10.0, 11.0, 12.0]
    with pytest.raises(ValueError, match="rounds = 0"):
        paired_latencies(Device(), [Path("a.onnx")], Path("ref.onnx"), rounds=0)


def test_walk_replaces_a_ruled_out_precision_with_the_layers_fastest():
    space, counter = _mlp()
    narrowed = lut_choices(space, _estimator(space, counter, CPU), counter, size_matters=False)
    policy = walk(narrowed, lambda t, free, keep, prev: (0.5, INT4), None)
    assert [a.precision for a in policy.layers.values()] == [INT8, INT8, FP32]


def test_bad_select_settings_are_refused():
    with pytest.raises(ValueError, match="rule 'slowest'"):
        SelectConfig(rule="slowest")
    with pytest.raises(ValueError, match="must be at least 1"):
        SelectConfig(top=0)


def test_the_floor_is_the_unpruned_precision_plan_the_device_measures_fastest(tmp_path):
    from types import SimpleNamespace

    space, counter = _mlp()
    narrowed = lut_choices(space, _estimator(space, counter, CPU), counter, size_matters=False)
    measured: list[list[str]] = []

    class Bench:
        progress = SimpleNamespace(live=lambda *a, **k: None)

        def __init__(self, speedups: dict[tuple[Precision, ...], float]) -> None:
            self.speedups, self.files = speedups, {}

        def variant(self, policy: Policy) -> Policy:
            return policy  # latency only: the untrained model stands for the policy

        def export(self, model: Policy, policy: Policy, path):
            self.files[path] = tuple(a.precision for a in policy.layers.values())
            return SimpleNamespace(path=path)

        def paired_many(self, paths, reference):
            measured.append([p.name for p in paths])
            return [SimpleNamespace(speedup=self.speedups[self.files[p]]) for p in paths]

    # The LUT's per-layer choice mixes int8 and fp32 (the last layer); measured, the conversions
    # between them cost more than the last layer's int8 kernel loses.
    mixed, all8 = (INT8, INT8, FP32), (INT8, INT8, INT8)
    bench = Bench({mixed: 1.2, (FP32, FP32, FP32): 1.0, all8: 1.7})
    floor = fastest_unpruned(bench, narrowed, tmp_path / "fp32.onnx", tmp_path)
    assert [a.precision for a in floor.layers.values()] == list(all8) and {
        a.keep_ratio for a in floor.layers.values()
    } == {1.0}
    assert len(measured) == 1 and len(measured[0]) == 3  # mixed, all fp32, all int8: in the same rounds
    bench = Bench({mixed: 1.9, (FP32, FP32, FP32): 1.0, all8: 1.7})
    assert [
        a.precision for a in fastest_unpruned(bench, narrowed, tmp_path / "r.onnx", tmp_path).layers.values()
    ] == list(mixed)
    # One precision for every layer: nothing to compare, nothing measured.
    gpu = {p: (0.4, 0.4, 0.4) if p is INT8 else (1.0, 1.0, 1.0) for p in (FP32, FP16, INT8, INT4)}
    uniform = lut_choices(space, _estimator(space, counter, gpu), counter, size_matters=False)
    measured.clear()
    assert {
        a.precision for a in fastest_unpruned(Bench({}), uniform, tmp_path / "r.onnx", tmp_path).layers.values()
    } == {INT8}
    assert measured == []


def test_a_resumed_search_keeps_the_space_it_started_with(tmp_path):
    from host.runs import RunFileError
    from host.search.run import _as_started

    space, counter = _mlp()
    started = _as_started(lut_choices(space, _estimator(space, counter, CPU), counter, False), tmp_path, False)
    # Since the start, the device's fp16 kernels became the fastest: the LUT now says otherwise.
    now = lut_choices(space, _estimator(space, counter, {**CPU, FP16: (0.1, 0.2, 0.01)}), counter, False)
    assert now.allowed != started.allowed
    assert _as_started(now, tmp_path, True) == started
    assert _as_started(now, tmp_path, False) == now  # a new search writes its own
    other = replace(now, precisions=(FP32, INT8), allowed=(), speed=())
    with pytest.raises(
        RunFileError, match=r"started over precisions \['fp32', 'fp16', 'int8', 'int4'\] .* start a new"
    ):
        _as_started(other, tmp_path, True)
