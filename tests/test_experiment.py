"""hadmc experiment: every study end to end at the tiny preset's budget (an MLP, 2 episodes,
1-epoch fine-tunes) on real agents, the table over seeds, and the errors before any work."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from device_agent.server import Agent
from host.cli import main
from host.experiment.config import PRESETS, load_experiment
from host.experiment.results import Results
from host.experiment.run import resume_experiment, run_experiment
from host.experiment.studies import ABLATION, ALTERNATIVE_LABELS, BASELINE, HADMC, HIRELC_VARIANTS, SEQUENTIAL
from host.runs import from_doc
from host.search.alternatives import DEFAULT_ALTERNATIVES
from lut_store.tomlfile import ConfigError
from tests.conftest import quick_config


@pytest.fixture(scope="module")
def agent2():
    """A second device on this machine: OpenVINO, so another fingerprint."""
    running = Agent(quick_config(runtime="openvino")).start()
    yield running
    running.stop(grace_s=1.0)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> tuple[Path, str]:
    """One baseline cache and one LUT store for the module: teachers train once, kernels are profiled once."""
    root = tmp_path_factory.mktemp("experiment")
    return root / "home", f"sqlite:///{root / 'lut.sqlite'}"


@pytest.fixture()
def tiny(shared, monkeypatch):
    home, store = shared
    monkeypatch.setenv("HADMC_HOME", str(home))
    return store


def _rows(results: Results) -> dict[tuple[str, ...], dict[str, float]]:
    return {row.label: {k: c.mean for k, c in row.cells.items()} for row in results.rows}


def _policy(path: Path) -> dict[str, dict]:
    return json.loads(path.read_text())["layers"]


def _common_outputs(out: Path, plot: str) -> None:
    assert json.loads((out / "results.json").read_text())["rows"]
    report = (out / "report.html").read_text()
    assert "http://" not in report and "https://" not in report and "data:image/png;base64," in report
    assert (out / "plots" / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"
    assert "| " in (out / "tables.md").read_text()


def _models_agree(values: dict[str, float]) -> None:
    assert values["latency_ms"] > 0 and values["speedup"] > 0
    assert abs(values["test_accuracy"] - values["test_accuracy_onnxruntime"]) <= 0.02


def test_sota(agent, tiny, tmp_path):
    out = tmp_path / "sota"
    results = run_experiment(load_experiment("sota", "tiny", devices=[agent.address], store=tiny), out, progress=False)
    rows = _rows(results)
    alternatives = [(ALTERNATIVE_LABELS[name],) for name in DEFAULT_ALTERNATIVES]
    methods = [(BASELINE,), ("AMC-style (amc)",), ("HAQ-style (haq)",), (SEQUENTIAL,), (HADMC,)]
    assert list(rows) == methods + alternatives
    for label in methods:
        _models_agree(rows[label])
    for label in alternatives:  # onnxruntime's quantizer: no torch model, measured like the rest
        values = rows[label]
        assert "test_accuracy" not in values and values["latency_ms"] > 0 and values["speedup"] > 0
        assert 0 < values["test_accuracy_onnxruntime"] <= 1 and values["file_bytes"] > 0
    amc, haq, sequential = rows[("AMC-style (amc)",)], rows[("HAQ-style (haq)",)], rows[(SEQUENTIAL,)]
    assert amc["effective_size_bytes"] == amc["fp32_size_bytes"] and amc["params_reduction"] > 0  # FP32, pruned
    assert haq["params_reduction"] == 0  # no pruning
    assert sequential["params"] == amc["params"]  # the amc policy's keep-ratios ...
    summary = json.loads((out / "seed0" / "search" / "summary.json").read_text())
    amc_policy = summary["controllers"]["amc"]["policy"]["layers"]
    stage = out / "seed0" / "sequential"
    lines = (stage / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == PRESETS["tiny"]["search"]["episodes"]
    for line in lines:  # ... in every episode of the stage
        layers = json.loads(line)["policy"]["layers"]
        assert {n: a["keep_ratio"] for n, a in layers.items()} == {n: a["keep_ratio"] for n, a in amc_policy.items()}
    assert _policy(stage / "final" / "policy.json") == _policy(stage / "policy.json")
    resolved = json.loads((out / "experiment.json").read_text())["search"]["search"]
    fp32_ms = json.loads((out / "seed0" / "search" / "baseline.json").read_text())["predicted_latency_ms"]
    assert resolved["latency_budget_ms"] == pytest.approx(
        PRESETS["tiny"]["experiment"]["sota_latency_fraction"] * fp32_ms, rel=0.05
    )
    _common_outputs(out, "model_bars")
    _common_outputs(out, "measured_pareto")


def test_ablation(agent, tiny, tmp_path):
    out = tmp_path / "ablation"
    results = run_experiment(
        load_experiment("ablation", "tiny", devices=[agent.address], store=tiny), out, progress=False
    )
    rows = _rows(results)
    assert list(rows) == [(BASELINE,), *((label,) for label, *_ in ABLATION)]
    found = _policy(out / "seed0" / "search" / "final" / "ppo" / "policy.json")
    for label, slug, prune, quantize, distil in ABLATION:
        _models_agree(rows[(label,)])
        policy = _policy(out / "seed0" / slug / "policy.json")
        assert all(a["keep_ratio"] == (found[n]["keep_ratio"] if prune else 1.0) for n, a in policy.items()), label
        assert all(a["precision"] == (found[n]["precision"] if quantize else "fp32") for n, a in policy.items()), label
        distill = json.loads((out / "seed0" / slug / "config.json").read_text())["distill"]
        assert (distill["alpha"], distill["beta"]) == ((0.5, 1.0) if distil else (1.0, 0.0)), label
        if not quantize:
            assert rows[(label,)]["effective_size_bytes"] == rows[(label,)]["fp32_size_bytes"]
        if not prune:
            assert rows[(label,)]["params_reduction"] == 0
    assert rows[("P: pruning only",)]["params"] == rows[("P+Q+D: full hadmc",)]["params"]
    _common_outputs(out, "model_bars")


def test_controllers_over_two_seeds_through_the_cli(agent, tiny, tmp_path, capsys):
    out = tmp_path / "controllers"
    argv = [
        "experiment",
        "controllers",
        "--preset",
        "tiny",
        "--seeds",
        "2",
        "--device",
        agent.address,
        "--store",
        tiny,
        "--out",
        str(out),
        "--json",
    ]
    assert main(argv) == 0
    results = from_doc(Results, json.loads(capsys.readouterr().out), "stdout")
    labels = [("ppo",), ("hirelc",), ("dqn",), ("random",)]
    assert [row.label for row in results.rows] == labels and results.seeds == (0, 1)
    per_seed = [json.loads((out / f"seed{s}" / "result.json").read_text()) for s in (0, 1)]
    for row in results.rows:
        best = [
            next(r["values"]["best_reward"] for r in doc["rows"] if r["label"] == list(row.label)) for doc in per_seed
        ]
        cell = row.cells["best_reward"]
        assert cell.n == 2 and cell.mean == pytest.approx(statistics.fmean(best))
        assert cell.std == pytest.approx(statistics.stdev(best))
        assert len(results.curves[f"{row.label[0]}/reward"].mean) == 2  # episodes
    tables = (out / "tables.md").read_text()
    assert "±" in tables and "Paired tests" in tables
    # PPO against each other controller on each tested metric, paired over the two seeds.
    assert {(t.b, t.metric) for t in results.tests} == {
        (other, metric)
        for other in (("hirelc",), ("dqn",), ("random",))
        for metric in ("best_reward", "speedup", "test_accuracy_onnxruntime")
    }
    assert all(t.a == ("ppo",) and t.n == 2 and t.min_p == 0.5 and t.p_value >= 0.5 for t in results.tests)
    _common_outputs(out, "episode_curves")
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and "Controllers" in (out / "report.html").read_text()
    # Resuming a finished experiment rebuilds its table and report; --seeds adds seeds, never drops them.
    assert resume_experiment("controllers", out, progress=False).rows == results.rows
    with pytest.raises(ConfigError, match="runs 2 seeds: --seeds with --resume adds seeds, it cannot drop any"):
        resume_experiment("controllers", out, seeds=1, progress=False)
    more = resume_experiment("controllers", out, seeds=3, progress=False)
    assert more.seeds == (0, 1, 2) and (out / "seed2" / "result.json").exists()
    assert json.loads((out / "experiment.json").read_text())["settings"]["seeds"] == 3
    assert json.loads((out / "seed0" / "result.json").read_text()) == per_seed[0]  # not redone
    with pytest.raises(ConfigError, match="holds a 'controllers' experiment, not 'ablation'"):
        resume_experiment("ablation", out, progress=False)
    with pytest.raises(ConfigError, match="holds a 'controllers' experiment: choose another --out.*--resume"):
        run_experiment(load_experiment("sota", "tiny"), out, progress=False)
    with pytest.raises(ConfigError, match="already holds a 'controllers' experiment: pass --resume"):
        run_experiment(load_experiment("controllers", "tiny"), out, progress=False)


def test_hirelc_ablation(agent, tiny, tmp_path):
    out = tmp_path / "hirelc"
    results = run_experiment(
        load_experiment("hirelc-ablation", "tiny", devices=[agent.address], store=tiny), out, progress=False
    )
    rows = _rows(results)
    assert list(rows) == [(v,) for v in HIRELC_VARIANTS]
    for i, ((variant,), values) in enumerate(rows.items()):
        summary = json.loads((out / "seed0" / f"variant{i}" / "summary.json").read_text())
        fp32 = summary["baseline"]["test_accuracy_onnxruntime"]
        assert values["accuracy_drop"] == pytest.approx(fp32 - values["test_accuracy_onnxruntime"]), variant
        assert values["storage_compression_ratio"] > 1 and values["speedup"] > 0, variant
    configs = [json.loads((out / "seed0" / f"variant{i}" / "config.json").read_text())["hirelc"] for i in range(5)]
    assert [c["hierarchy"] for c in configs] == [True, False, True, True, True]
    assert configs[2]["lla_members"] == ["ppo"] and configs[3]["lla_members"] == ["a2c"] * 3
    assert [c["sensitivity"] for c in configs] == [True, True, True, True, False]
    # Without the high-level agents every block gets the global target.
    rows_flat = [json.loads(line) for line in (out / "seed0" / "variant1" / "episodes.jsonl").read_text().splitlines()]
    assert all(set(r["hirelc"]["block_targets"].values()) == {0.25} for r in rows_flat)


def test_cross_dataset(agent, tiny, tmp_path):
    out = tmp_path / "cross-dataset"
    results = run_experiment(
        load_experiment("cross-dataset", "tiny", devices=[agent.address], store=tiny), out, progress=False
    )
    rows = _rows(results)
    assert list(rows) == [
        (data, "mlp", version)
        for data in ("synthetic-neu-det", "digits", "breast-cancer")
        for version in (BASELINE, HADMC)
    ]
    for values in rows.values():
        _models_agree(values)
    assert rows[("digits", "mlp", BASELINE)]["params"] != rows[("breast-cancer", "mlp", BASELINE)]["params"]
    _common_outputs(out, "model_bars")


def test_cross_device(agent, agent2, tiny, tmp_path):
    # The 64x64 images' wide first layer: the breast-cancer MLP's kernels are so small that the
    # 2-thread agent's profile can elide every one of them (a 0 ms model the reward refuses).
    config = tmp_path / "config.toml"
    # The paper's split (no extra validation and test images): this test is about devices, not data.
    config.write_text(
        '[data]\nname = "synthetic-neu-det"\nfactory_kwargs = { extra_val_per_class = 0, extra_test_per_class = 0 }\n'
    )
    out = tmp_path / "cross-device"
    experiment = load_experiment("cross-device", "tiny", config, devices=[agent.address, agent2.address], store=tiny)
    results = run_experiment(experiment, out, progress=False)
    devices = list(dict.fromkeys(row.label[1] for row in results.rows))
    assert len(devices) == 2 and devices[0].startswith("onnxruntime CPU") and devices[1].startswith("openvino CPU")
    rows = _rows(results)
    assert set(rows) == {(policy, on) for policy in (BASELINE, *devices) for on in devices}
    for policy, on in rows:  # every off-diagonal cell measures the claim, or says the device cannot run it
        values = rows[(policy, on)]
        if values["runs_on_device"] == 0:  # a bf16 layer from OpenVINO's search, on onnxruntime
            assert policy == devices[1] and on == devices[0] and set(values) == {"runs_on_device"}
            continue
        if policy in (BASELINE, on):
            assert "latency_vs_own_policy" not in values
            continue
        own = rows[(on, on)]
        assert values["latency_vs_own_policy"] == pytest.approx(values["latency_ms"] / own["latency_ms"])
        rival = values["test_accuracy_onnxruntime"] >= own["test_accuracy_onnxruntime"] - 0.005
        assert ("own_policy_best" in values) == rival
        if rival:
            assert values["own_policy_best"] == float(values["latency_vs_own_policy"] >= 1.0)
    for values in rows.values():
        if values["runs_on_device"] == 0:
            continue
        assert values["latency_ms"] > 0 and values["predicted_latency_ms"] > 0
        assert values["speedup"] > 0
    for on in devices:  # the FP32 model measured in turn with itself: a speedup of 1 but for the noise
        assert 0.5 < rows[(BASELINE, on)]["speedup"] < 2.0
    tables = (out / "tables.md").read_text()
    assert "Speedup over FP32 as a matrix" in tables and "Measured latency (ms) as a matrix" in tables
    _common_outputs(out, "device_matrix")

    same = load_experiment("cross-device", "tiny", devices=[agent.address, agent.address], store=tiny)
    with pytest.raises(ConfigError, match="have the same fingerprint"):
        run_experiment(same, tmp_path / "same", progress=False)
    assert not (tmp_path / "same").exists()  # found before any work


def test_a_policy_the_device_cannot_run_is_recorded_not_sent(agent, tiny, tmp_path):
    from host.compress.policy import LayerAction, Policy
    from host.experiment.studies import measure_on
    from host.workbench import Workbench
    from lut_store.precision import Precision

    experiment = load_experiment("sota", "tiny", devices=[agent.address], store=tiny)
    with Workbench.open(experiment.search) as bench:
        assert Precision.BF16 not in bench.device_precisions()  # onnxruntime's CPU provider has no bf16 kernels
        fp32 = bench.export_reference(tmp_path / "fp32.onnx").path
        layers = {lim.name: LayerAction(1.0, Precision.FP32) for lim in bench.layer_limits()}
        layers[next(iter(layers))] = LayerAction(1.0, Precision.BF16)
        policy = Policy(experiment.search.model, layers)
        bf16 = bench.export(bench.variant(policy), policy, tmp_path / "bf16.onnx").path
        rows = measure_on(bench, "ort", fp32, [("ov", bf16, {Precision.BF16, Precision.FP32})], progress=False)
    by_label = {row.label: row.values for row in rows}
    assert by_label[("ov", "ort")] == {"runs_on_device": 0.0}
    assert by_label[(BASELINE, "ort")]["runs_on_device"] == 1.0 and by_label[(BASELINE, "ort")]["latency_ms"] > 0


def test_cross_device_on_embedded_agents_of_each_runtime(tmp_path):
    from host.experiment.studies import _devices

    config = tmp_path / "config.toml"
    config.write_text('[experiment]\ndevice_runtimes = ["onnxruntime", "openvino"]\n[device]\nthreads = 1\n')
    devices = _devices(load_experiment("cross-device", "tiny", config))
    assert [(d.name, d.runtime, d.threads) for d in devices] == [("", "onnxruntime", 1), ("", "openvino", 1)]
    assert devices[1].describe() == "embedded openvino agent, 1 thread"


@pytest.mark.parametrize(
    "study, doc, message",
    [
        ("sota", "[search]\nmax_params_fraction = 0.3", "remove max_params_fraction and set latency_budget_ms"),
        ("sota", "[experiment]\nsota_latency_fraction = 0.0", "haq, which needs a latency budget"),
        ("ablation", '[search]\ncontrollers = ["ppo"]', "each study runs its own controllers"),
        ("cross-device", "[experiment]\ndevice_threads = [1]", "needs at least two devices"),
        ("cross-device", '[experiment]\ndevice_runtimes = ["openvino"]', "needs at least two devices"),
        (
            "cross-device",
            '[experiment]\ndevices = ["a:1", "b:2"]\ndevice_runtimes = ["onnxruntime", "openvino"]',
            "devices and device_runtimes both given",
        ),
        ("ablation", "[experiment]\nseeds = 0", "at least one seed"),
        ("ablation", "[search]\nmax_params_fraction = 0.3\nlatency_budget_ms = 1.0", "not both"),
    ],
)
def test_config_errors_before_any_work(tmp_path, study, doc, message):
    config = tmp_path / "config.toml"
    config.write_text(doc + "\n")
    with pytest.raises(ConfigError, match=message):
        load_experiment(study, "tiny", config)


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["experiment", "tables", "--out", str(tmp_path / "x")])
    assert (
        exc.value.code == 2
        and "choose from 'sota', 'ablation', 'controllers', 'hirelc-ablation', 'cross-dataset', 'cross-device'"
        in capsys.readouterr().err
    )
    with pytest.raises(ConfigError, match="unknown study 'tables'; choices: sota, ablation"):
        load_experiment("tables")
    assert main(["experiment", "ablation", "--seeds", "0", "--out", str(tmp_path / "x")]) == 1
    assert "--seeds 0: an experiment needs at least one seed" in capsys.readouterr().err
    assert main(["experiment", "ablation", "--resume", "--out", str(tmp_path / "x")]) == 1
    assert "holds no experiment (no experiment.json); run without --resume" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "episodes.jsonl").write_text("")
    assert main(["experiment", "ablation", "--preset", "tiny", "--out", str(tmp_path / "busy")]) == 1
    assert "is not empty and holds no experiment: choose another --out" in capsys.readouterr().err
    assert main(["experiment", "ablation", "--device", "a:1", "--device", "b:2", "--out", str(tmp_path / "y")]) == 1
    assert "only cross-device runs on several devices" in capsys.readouterr().err


def test_the_cli_offers_every_preset_and_study():
    from host.experiment import PRESET_NAMES, STUDIES
    from host.experiment.studies import STUDY

    assert tuple(PRESETS) == PRESET_NAMES and tuple(STUDY) == STUDIES


def test_a_fixed_keep_space_leaves_haq_only_the_precisions():
    """HAQ on the amc policy's keep-ratios: every proposal keeps them and meets the budget, on a
    cost (narrower weights and fewer channels are cheaper) whose budget needs low precision somewhere."""
    import torch

    from host.compress.policy import Policy
    from host.experiment.sequential import FixedKeepSpace
    from host.models import build_model
    from host.search.ppo import PPOConfig
    from host.search.registry import make_controller
    from host.search.reward import latency_constraint
    from host.search.space import SearchSpace, describe_layers
    from lut_store.precision import Precision

    net = build_model("resnet18", 6, (3, 64, 64))
    precisions = (Precision.FP32, Precision.FP16, Precision.INT8)
    plain = SearchSpace("resnet18", describe_layers(net, torch.zeros((1, 3, 64, 64))), precisions)
    base = plain.policy([0.5] * len(plain.layers), [Precision.FP32] * len(plain.layers))
    space = FixedKeepSpace.around(plain, base)

    def cost(policy: Policy) -> float:
        return sum(a.keep_ratio * a.precision.weight_bits for a in policy.layers.values())

    budget = 0.7 * cost(base)
    controller = make_controller("haq", space, PPOConfig(), 0, latency_constraint(cost, budget))
    keeps = {name: a.keep_ratio for name, a in base.layers.items()}
    for episode in range(3):
        policy = controller.propose(episode)
        assert {name: a.keep_ratio for name, a in policy.layers.items()} == keeps
        assert cost(policy) <= budget and any(a.precision is not Precision.FP32 for a in policy.layers.values())
        controller.observe(1.0)
    with pytest.raises(ValueError, match="base policy has no action"):
        FixedKeepSpace.around(plain, Policy("resnet18", {}))


def test_cells_show_counts_whole_and_the_spread_over_seeds():
    from host.experiment.results import Cell

    assert Cell.of([15.0]).text("#") == "15"
    assert Cell.of([14.0, 15.0]).text("#") == "14.5 ± 0.7 [14.0, 15.0]"
    assert Cell.of([0.5, 0.7]).text("%") == "60.00% ± 14.14 [50.00, 70.00]"
    assert Cell.of([float("nan")]).text("ms") == "nan"
