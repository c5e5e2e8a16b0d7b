"""The search: PPO maths in closed form, the action space, controllers, and whole runs on a real
agent (MLP on breast-cancer: seconds per episode)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from host.compress.prune import layer_limits
from host.models import build_model
from host.runs import RunFileError
from host.search.ppo import PPOConfig, gae
from host.search.registry import make_controller
from host.search.run import load_search_config, run_search
from host.search.space import SearchSpace, describe_layers
from lut_store.precision import Precision
from lut_store.tomlfile import ConfigError
from tests.helpers import ORT_CPU

ROOT = Path(__file__).resolve().parent.parent


def test_gae_closed_form():
    # Constant value v, one reward R at the end of a 3-step episode: delta_t = -v + gamma v for
    # t < 2, delta_2 = R - v; A_t = sum_k (gamma lambda)^k delta_{t+k}.
    gamma, lam, v, r = 0.9, 0.8, 0.5, 2.0
    adv, ret = gae(np.array([0.0, 0.0, r]), np.full(3, v), np.array([False, False, True]), 123.0, gamma, lam)
    d = [gamma * v - v, gamma * v - v, r - v]
    gl = gamma * lam
    expected = [d[0] + gl * d[1] + gl**2 * d[2], d[1] + gl * d[2], d[2]]
    assert np.allclose(adv, expected) and np.allclose(ret, np.array(expected) + v)
    # Nothing flows back across an episode's end (the 123.0 bootstrap is never used either).
    adv2, _ = gae(np.array([1.0, 0.0]), np.zeros(2), np.array([True, True]), 5.0, gamma, lam)
    assert np.allclose(adv2, [1.0, 0.0])


def _space(model: str, precisions: tuple[Precision, ...] = ORT_CPU) -> tuple[SearchSpace, list]:
    net = build_model(model, 6, (3, 64, 64))
    example = torch.zeros((1, 3, 64, 64))
    limits = layer_limits(net, example)
    return SearchSpace(model, describe_layers(net, example, limits), precisions), limits


def test_config_errors():
    with pytest.raises(ConfigError, match="at least one episode"):
        load_search_config(None, {"search": {"episodes": 0}})
    with pytest.raises(ConfigError, match="choose among ppo, random, uniform"):
        load_search_config(None, {"search": {"controllers": ["ppo", "grid"]}})
    with pytest.raises(ValueError, match="unknown controller"):
        make_controller("grid", _space("resnet18")[0], PPOConfig(), 0)
    config = load_search_config(None, {"search": {"precisions": ["fp32", "int4"]}})
    assert config.search.precisions == [Precision.FP32, Precision.INT4W]
    with pytest.raises(ConfigError, match=r"search\.precisions\[1\]: unknown precision 'int3'; allowed: fp32, fp16"):
        load_search_config(None, {"search": {"precisions": ["fp32", "int3"]}})


MLP = {
    "model": "mlp",
    "data": {"name": "breast-cancer"},
    "search": {"controllers": ["ppo", "random", "uniform"], "episodes": 2, "episode_samples": 64},
    "baseline": {"epochs": 2},
    "final_distill": {"epochs": 1},
}


def _check_selection(out, summary) -> None:
    """fastest-within's floor (the unpruned network, exported) and each controller's candidates."""
    floor = json.loads((out / "final" / "floor.json").read_text())
    assert 0 < floor["val_accuracy"] <= 1 and {a["keep_ratio"] for a in floor["policy"]["layers"].values()} == {1.0}
    assert floor["onnx"] == "final/floor.onnx" and (out / floor["onnx"]).exists() and floor["predicted_latency_ms"] > 0
    for final in summary.controllers.values():  # two episodes and the unpruned network; the final is the chosen one
        assert len(final.selection) == 3 and final.selection[-1].episode is None  # the floor: no episode
        assert [c.episode for c in final.selection if c.chosen] == [final.episode] and final.selection[-1].val_kl
        assert all(c.speedup > 0 and c.measured_latency_ms > 0 for c in final.selection)  # measured, not predicted


def test_search_run_directory(agent, tmp_path, monkeypatch):
    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    select = {"top": 2, "epochs": 1, "rule": "fastest-within"}  # each final chosen among 2 episodes
    store = f"sqlite:///{tmp_path / 'lut.sqlite'}"
    config = load_search_config(None, {**MLP, "device": {"name": agent.address}, "store": store, "select": select})
    out = tmp_path / "run"
    summary = run_search(config, out, progress=False)
    _check_selection(out, summary)
    rows = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert sorted((r["controller"], r["episode"]) for r in rows) == sorted(
        (c, e) for c in MLP["search"]["controllers"] for e in range(2)
    )
    for r in rows:
        assert r["predicted_latency_ms"] > 0 and 0 <= r["val_accuracy"] <= 1 and r["lut_version_ids"]
    # PPO's warm start: the damage of each pruning group measured once, one proposal played first.
    damage = json.loads((out / "checkpoints" / "damage.json").read_text())
    assert damage["keeps"] == [0.55, 0.2] and damage["kl"] and all(min(v) >= 0 for v in damage["kl"].values())
    assert [r["proposal"] for r in sorted(rows, key=lambda r: (r["controller"], r["episode"]))] == [True] + [False] * 5
    for name, c in summary.controllers.items():
        assert (out / c.onnx).exists() and (out / "final" / name / "benchmark.json").exists()
        assert abs(c.test_accuracy - c.test_accuracy_onnxruntime) <= 0.02
        assert c.measured_latency.median_ms > 0 and c.speedup > 0
        # The speedup is over the FP32 model measured again right after this one.
        assert c.speedup == pytest.approx(c.baseline_measured_latency.median_ms / c.measured_latency.median_ms)
        assert json.loads((out / "final" / name / "baseline_benchmark.json").read_text())["latency"]["n"] >= 2
    for f in ("config.json", "device.json", "baseline.json", "summary.json"):
        assert json.loads((out / f).read_text())
    # Each final model's file and its agreement with the teacher, both as the device runs them.
    for c in summary.controllers.values():
        assert c.file_bytes == (out / c.onnx).stat().st_size and 0 < c.agreement.teacher_agreement <= 1
        assert len(c.agreement.recall) == 2 and 0 <= c.agreement.chi2_p_value <= 1
    # The one-command alternatives, measured beside them: onnxruntime's int8 of the teacher, and of
    # the teacher pruned uniformly to the first controller's predicted latency.
    ptq, uniform = summary.alternatives["ort-ptq"], summary.alternatives["uniform+ptq"]
    assert ptq.test_accuracy_onnxruntime > 0.8  # the unpruned teacher survives int8 (uniform+ptq is not fine-tuned)
    assert ptq.keep_ratio == 1.0 and ptq.params == summary.baseline.params and uniform.params < ptq.params
    ppo_ms = summary.controllers["ppo"].predicted_latency_ms
    assert f"budget {ppo_ms:.4g} ms" in uniform.description
    for a in (ptq, uniform):
        ops = {n.op_type for n in onnx.load(out / a.onnx).graph.node}
        assert "QuantizeLinear" in ops and a.file_bytes == (out / a.onnx).stat().st_size
        assert 0 < a.test_accuracy_onnxruntime <= 1 and a.speedup > 0 and len(a.benchmark_rounds) >= 1
        assert a.speedup == pytest.approx(a.baseline_measured_latency.median_ms / a.measured_latency.median_ms)
    report = (out / "report.html").read_text()
    assert "ort-ptq" in report and "uniform+ptq" in report
    assert "http://" not in report and "https://" not in report and report.count("data:image/png;base64,") == 4
    assert (
        all(name in report for name in MLP["search"]["controllers"])
        and json.loads((out / "device.json").read_text())["fingerprint_hash"] in report
    )
    assert all(
        (out / "plots" / f"{p}.png").read_bytes()[:4] == b"\x89PNG"
        for p in ("accuracy_vs_latency", "reward_per_episode", "per_layer_policy", "predicted_vs_measured")
    )
    with (out / "episodes.jsonl").open("a") as f:
        f.write('{"controller": "ppo", "epis')  # a write cut short by a kill
    from host.cli import main

    assert main(["report", str(out)]) == 0
    assert "the last one, was truncated" in (out / "report.html").read_text()
    with pytest.raises(ConfigError, match="--resume"):
        run_search(config, out, progress=False)
    # A damaged controller checkpoint stops --resume with the file named, nothing discarded.
    episodes = (out / "episodes.jsonl").read_bytes()
    (out / "checkpoints" / "random.pt").write_bytes(b"PK\x03\x04 torn by a full disk")
    with pytest.raises(RunFileError, match=r"checkpoints/random.pt cannot be read .*delete the file"):
        run_search(config, out, resume=True, progress=False)
    assert (out / "episodes.jsonl").read_bytes() == episodes


def test_a_tolerance_reward_measures_its_reference_first(agent, tmp_path, monkeypatch):
    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    overrides = {
        **MLP,
        "search": {**MLP["search"], "controllers": ["ppo"], "alternatives": []},
        "reward": {"latency_weight": 1.0, "size_weight": 0.0, "accuracy_tolerance": 0.01},
        "device": {"name": agent.address},
        "store": f"sqlite:///{tmp_path / 'lut.sqlite'}",
    }
    out = tmp_path / "run"
    summary = run_search(load_search_config(None, overrides), out, progress=False)
    reference = json.loads((out / "checkpoints" / "accuracy_reference.json").read_text())
    assert 0 < reference["val_accuracy"] <= 1
    assert {a["keep_ratio"] for a in reference["policy"]["layers"].values()} == {1.0}
    rows = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    floor = reference["val_accuracy"] - 0.01
    for r in rows:  # speed alone within the tolerance, scaled down below it
        speed = summary.baseline.predicted_latency_ms / r["predicted_latency_ms"]
        factor = min(1.0, np.exp(-(floor - r["val_accuracy"]) / 0.01))
        assert r["reward"] == pytest.approx(speed * factor)
    assert summary.alternatives == {}


def test_a_killed_search_resumes_with_no_episode_lost_or_repeated(agent, tmp_path):
    config = tmp_path / "search.toml"
    config.write_text(
        'model = "mlp"\n[search]\ncontrollers = ["ppo", "random"]\nepisodes = 4\nepisode_samples = 64\n'
        '[data]\nname = "breast-cancer"\n[baseline]\nepochs = 2\n[final_distill]\nepochs = 1\n'
        "[ppo]\nsurrogate_episodes = 4\nsurrogate_warmup = 1\n"
    )  # practice is checkpointed too
    out = tmp_path / "run"
    env = {"HADMC_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    argv = [
        sys.executable,
        "-m",
        "host.cli",
        "search",
        "--config",
        str(config),
        "--device",
        agent.address,
        "--store",
        f"sqlite:///{tmp_path / 'lut.sqlite'}",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        lines = (out / "episodes.jsonl").read_text().splitlines() if (out / "episodes.jsonl").exists() else []
        if len(lines) >= 3:
            break
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert len(lines) >= 3, "the search made too little progress to test resuming"
    before = {(r["controller"], r["episode"]) for r in _complete_rows(out / "episodes.jsonl")}
    # The space as the start saw it is what a resumed search uses, not what the LUT says now: one
    # precision per layer is written here, and every episode after the resume must keep to it.
    space = json.loads((out / "space.json").read_text())
    one = [allowed[:1] for allowed in space["allowed"]]
    space["allowed"] = one
    space["speed"] = [[float(p == kept[0]) for p in space["precisions"]] for kept in one]
    (out / "space.json").write_text(json.dumps(space))
    done = subprocess.run([*argv, "--resume", "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    resumed = [r for r in rows if (r["controller"], r["episode"]) not in before]
    assert resumed, "every episode was done before the kill"
    names = space["layers"]
    for r in resumed:
        assert [r["policy"]["layers"][name]["precision"] for name in names] == [kept[0] for kept in one], r
    assert sorted((r["controller"], r["episode"]) for r in rows) == [
        (c, e) for c in ("ppo", "random") for e in range(4)
    ]
    ppo = sorted((r for r in rows if r["controller"] == "ppo"), key=lambda r: r["episode"])
    # The warm start's proposals come first (all but one episode); practice begins after PPO's own.
    assert [r["proposal"] for r in ppo] == [True, True, True, False]
    assert [r["surrogate_episodes_so_far"] for r in ppo] == [0, 0, 0, 4]
    assert ppo[0]["surrogate_reward"] is None and all(r["surrogate_reward"] > 0 for r in ppo[1:])
    assert set(json.loads(done.stdout)["controllers"]) == {"ppo", "random"}


def _complete_rows(path: Path) -> list[dict]:
    """The rows of an episode log, less a last line cut short by a kill."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def test_an_unreachable_device_fails_fast_naming_it(tmp_path, monkeypatch):
    from host.agent_client import AgentError

    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    config = load_search_config(
        None, {**MLP, "device": {"name": "127.0.0.1:1"}, "store": f"sqlite:///{tmp_path / 'l.sqlite'}"}
    )
    t0 = time.monotonic()
    with pytest.raises(AgentError, match=r"127\.0\.0\.1:1.*after 3 attempts"):
        run_search(config, tmp_path / "run", progress=False)
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "home" / "baselines").exists()  # nothing was trained first


def test_pareto_front():
    from host.report import pareto_front

    points = [(1.0, 0.9), (2.0, 0.95), (1.5, 0.85), (0.5, 0.6), (3.0, 0.94), (0.5, 0.7)]
    assert pareto_front(points) == [5, 0, 1]


def test_report_needs_a_finished_run_and_tolerates_a_torn_line(tmp_path):
    from host.report import ReportError, build_report

    with pytest.raises(ReportError, match="summary.json"):
        build_report(tmp_path)


def test_a_params_target_and_a_latency_budget_bound_every_policy(agent, tmp_path, monkeypatch):
    """amc (and ppo) under a parameter target, haq under a latency budget, on a real agent: every
    episode's pruned model meets the target exactly, every haq policy meets the budget on the LUT
    estimate the bounding uses."""
    from host.compress.policy import Policy
    from host.search.budget import latency_estimator
    from host.search.space import ParamCounter
    from host.workbench import Workbench

    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    store = f"sqlite:///{tmp_path / 'lut.sqlite'}"
    base = {**MLP, "device": {"name": agent.address}, "store": store}
    run = tmp_path / "amc"
    run_search(
        load_search_config(
            None, {**base, "search": {**MLP["search"], "controllers": ["amc", "ppo"], "max_params_fraction": 0.3}}
        ),
        run,
        progress=False,
    )
    params = json.loads((run / "baseline.json").read_text())["params"]
    rows = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["params"] <= 0.3 * params for r in rows)
    amc = [a for r in rows if r["controller"] == "amc" for a in r["policy"]["layers"].values()]
    assert all(a["precision"] == "fp32" for a in amc)

    config = load_search_config(None, base)
    with Workbench.open(config) as bench:
        net = bench.fresh_model()
        space = SearchSpace("mlp", describe_layers(net, bench.example), ORT_CPU)
        estimate = latency_estimator(space, ParamCounter(net, bench.example), bench, tmp_path)
        # The teacher against itself: its own accuracy, full agreement, no divergence.
        itself = bench.fidelity(bench.teacher, "val")
        assert itself.accuracy == bench.accuracy(bench.teacher, "val") and itself.agreement == 1.0
        assert itself.kl == pytest.approx(0.0, abs=1e-6)
        assert 0.0 < bench.fidelity(net, "val").kl  # an untrained network disagrees
    names = [x.name for x in space.layers]
    uniform = sorted(estimate(Policy.uniform("mlp", names, 1.0, p)) for p in space.precisions)
    budget_ms = (uniform[0] + uniform[-1]) / 2  # binds: the costliest precision everywhere misses it
    run = tmp_path / "haq"
    run_search(
        load_search_config(
            None, {**base, "search": {**MLP["search"], "controllers": ["haq"], "latency_budget_ms": budget_ms}}
        ),
        run,
        progress=False,
    )
    for row in (json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()):
        assert {a["keep_ratio"] for a in row["policy"]["layers"].values()} == {1.0}
        assert estimate(Policy.from_json(json.dumps(row["policy"]))) <= budget_ms

    with pytest.raises(ConfigError, match="latency_ms budget 1e-06 cannot be met"):
        run_search(
            load_search_config(
                None, {**base, "search": {**MLP["search"], "controllers": ["haq"], "latency_budget_ms": 1e-6}}
            ),
            tmp_path / "infeasible",
            progress=False,
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"max_params_fraction": 0.3, "latency_budget_ms": 1.0}, "not both"),
        ({"max_params_fraction": 1.5}, r"must lie in \(0, 1\]"),
        ({"latency_budget_ms": -1.0}, "must be positive"),
        ({"controllers": ["haq"]}, "haq searches precisions under a latency budget: set latency_budget_ms"),
        ({"controllers": ["amc"]}, "amc prunes to a target: set max_params_fraction"),
    ],
)
def test_constraint_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_search_config(None, {"search": overrides})
