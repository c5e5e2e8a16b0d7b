"""The studies of `hadmc experiment`: each runs one seed into its directory (searches through
`run_search`, single policies through `run_compress`) and returns that seed's table rows.

A finished search or compression in the directory is read back, not redone, and a killed
search resumes from its checkpoints: so `--resume` continues a study where it stopped.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from host.compress.distill import DistillConfig
from host.compress.policy import DEFAULT_GRANULARITY, LayerAction, Policy
from host.compress.run import CompressConfig, run_compress
from host.device import Device, DeviceConfig, open_device
from host.experiment.config import Experiment
from host.experiment.parallel import on_ray, on_separate_machines, run_tasks
from host.experiment.results import MODEL_COLUMNS, Column, ModelMetrics, Row, SeedResult
from host.experiment.sequential import search_precisions
from host.progress import Progress
from host.runs import CompressSummary, Latency, SearchSummary, read_record, write_json
from host.search.run import SearchConfig, run_search
from host.workbench import Workbench
from lut_store.precision import Precision
from lut_store.tomlfile import ConfigError

BASELINE = "FP32 baseline"


def _say(progress: bool, text: str) -> None:
    Progress(progress).say(text)


def _search(config: SearchConfig, out: Path, progress: bool) -> SearchSummary:
    """run_search into `out`; the summary of one already finished there; a killed one resumes."""
    if (out / "summary.json").exists():
        return read_record(out / "summary.json", SearchSummary)
    return run_search(config, out, resume=(out / "config.json").exists(), progress=progress)


def _searches(
    experiment: Experiment,
    study: str,
    jobs: list[tuple[str, SearchConfig, Path]],
    progress: bool,
    parallel: bool = True,
) -> list[SearchSummary]:
    """One seed's independent searches, (label, config, out) each: as Ray tasks where the
    experiment's work may run there (host/experiment/parallel.py) and `parallel` allows, else one
    after another."""
    if parallel and len(jobs) > 1 and on_ray(experiment):
        _say(progress, f"[{study}] {len(jobs)} searches as Ray tasks: {'; '.join(label for label, _, _ in jobs)} ...")
        found = run_tasks(experiment, _search, [(out.name, (config, out, False)) for _, config, out in jobs])
        return [found[out.name] for _, _, out in jobs]
    searches = []
    for label, config, out in jobs:
        _say(progress, f"[{study}] {label} ...")
        searches.append(_search(config, out, progress))
    return searches


def _compress(
    config: SearchConfig, policy: Policy, distill: DistillConfig, out: Path, device: Device | None, progress: bool
) -> CompressSummary:
    """run_compress of one policy as a search's final model is made (its workbench settings,
    `distill`); the summary of one already finished in `out`."""
    if (out / "summary.json").exists():
        return read_record(out / "summary.json", CompressSummary)
    tables = ("model", "store", "data", "baseline", "device", "lut", "compress")
    bench = {name: getattr(config, name) for name in tables}
    return run_compress(CompressConfig(**bench, distill=distill), policy, out, progress, device)


def _run_dir(path: Path, seed_dir: Path) -> str:
    """A run directory relative to the experiment's (the seed directory's parent)."""
    return str(path.relative_to(seed_dir.parent))


# --- sota: the paper's Table 2 ------------------------------------------------------------

MODEL_TESTED = ("speedup", "latency_ms", "test_accuracy_onnxruntime")
SOTA_ROWS = (("amc", "AMC-style (amc)"), ("haq", "HAQ-style (haq)"))
SEQUENTIAL = "AMC then HAQ (sequential)"
HADMC = "hadmc (ppo)"
ALTERNATIVE_LABELS = {
    "ort-ptq": "onnxruntime int8 of the teacher (ort-ptq)",
    "uniform+ptq": "uniform pruning at the budget, then onnxruntime int8 (uniform+ptq)",
    "openvino-default": "the FP32 teacher on OpenVINO's defaults (openvino-default)",
}


def _fp32_latency_ms(config: SearchConfig, progress: bool) -> float:
    """The FP32 model's latency as the device's LUT predicts it (kernels it lacks are profiled),
    the LUT first checked against the model's measurement (`Workbench.check_lut_drift`)."""
    from host.compress.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp, Workbench.open(config, Progress(progress)) as bench:
        path = Path(tmp) / "fp32.onnx"
        export_onnx(bench.fresh_model().eval(), path, bench.input_shape)
        measured = Latency.of(bench.device.benchmark(path, batch_size=config.device.benchmark_batch).latency)
        bench.check_lut_drift(path, measured.record_ms)
        latency_ms = bench.predict(path).latency_ms
    return latency_ms


def _prepare_sota(experiment: Experiment, progress: bool) -> Experiment:
    """The latency budget in ms: the config's, else the fraction of the FP32 model's LUT latency.
    The searches then keep the LUT that budget was read from: it was checked against the device
    just now, and a second check could re-profile it on noise alone and move the reference."""
    search = experiment.search
    if search.search.latency_budget_ms:
        return experiment
    fp32_ms = _fp32_latency_ms(search, progress)
    budget_ms = experiment.settings.sota_latency_fraction * fp32_ms
    _say(
        progress,
        f"[sota] latency budget {budget_ms:.4f} ms = {experiment.settings.sota_latency_fraction:g} x "
        f"{fp32_ms:.4f} ms (the FP32 model on the device's LUT)",
    )
    checked = replace(search, lut=replace(search.lut, max_drift=0.0))
    return replace(experiment, search=checked.with_search(latency_budget_ms=budget_ms))


def sota(experiment: Experiment, seed: int, directory: Path, progress: bool) -> SeedResult:
    config = experiment.search.with_search(controllers=["amc", "haq", "ppo"], seed=seed)
    search = _search(config, directory / "search", progress)
    rows = [Row((BASELINE,), ModelMetrics.of_baseline(search.baseline).values())]
    rows += [Row((label,), ModelMetrics.of_final(search.controllers[name]).values()) for name, label in SOTA_ROWS]
    stage = directory / "sequential"
    chosen = stage / "policy.json"
    if not chosen.exists():
        _say(progress, "[sota] sequential: precisions on the amc policy's keep-ratios (haq) ...")
        policy = search_precisions(config, search.controllers["amc"].policy, stage, progress)
        write_json(chosen, json.loads(policy.to_json()))
    final = _compress(
        config, Policy.load(chosen), replace(config.final_distill, seed=seed), stage / "final", None, progress
    )
    rows.append(Row((SEQUENTIAL,), ModelMetrics.of_final(final.compressed).values()))
    rows.append(Row((HADMC,), ModelMetrics.of_final(search.controllers["ppo"]).values()))
    rows += [
        Row((ALTERNATIVE_LABELS[name],), ModelMetrics.of_alternative(a, search.baseline.params).values())
        for name, a in search.alternatives.items()
    ]
    return SeedResult(seed, tuple(rows), {}, (_run_dir(directory / "search", directory),))


SOTA_DOC = (
    "Every method under one latency budget (the config's latency_budget_ms, else sota_latency_fraction of the "
    "FP32 model's LUT latency), each final model fine-tuned by distillation for final_distill epochs, exported, "
    "checked in onnxruntime on the device and benchmarked there. AMC-style: DDPG over keep-ratios, every layer "
    "FP32. HAQ-style: DDPG over precisions, no pruning. AMC then HAQ: the AMC policy's keep-ratios fixed, then a "
    "HAQ search (same episodes) chooses only the precisions. hadmc: PPO over the joint action. The last rows are "
    "what a user gets in one command: onnxruntime's static int8 quantizer (per-channel, calibrated on the training "
    "split) on the FP32 teacher, and on the teacher pruned uniformly to the largest keep-ratio whose int8 model the "
    "LUT predicts within the budget (BatchNorm re-estimated, no fine-tuning), and, where [search] alternatives "
    "names openvino-default, the FP32 teacher as OpenVINO runs it by default on the same machine (its speedup is "
    "over the FP32 model on the search's device); they have no torch model and no effective-size accounting, so "
    "those cells are empty. Speedup: over the FP32 model measured in the same session."
)


# --- ablation: the paper's Table 3 --------------------------------------------------------

# (row, directory, keep the policy's keep-ratios, keep its precisions, fine-tune by distillation)
ABLATION = (
    ("P: pruning only", "p", True, False, False),
    ("Q: quantization only", "q", False, True, False),
    ("D: distillation only", "d", False, False, True),
    ("P+Q", "pq", True, True, False),
    ("P+D", "pd", True, False, True),
    ("P+Q+D: full hadmc", "pqd", True, True, True),
)


def ablated(policy: Policy, prune: bool, quantize: bool) -> Policy:
    """`policy` with pruning (keep-ratios) and/or quantization (precisions) taken out: keep 1.0, FP32."""
    return Policy(
        policy.model,
        {
            name: LayerAction(
                a.keep_ratio if prune else 1.0,
                a.precision if quantize else Precision.FP32,
                a.granularity if quantize else DEFAULT_GRANULARITY,
            )
            for name, a in policy.layers.items()
        },
    )


def ablation(experiment: Experiment, seed: int, directory: Path, progress: bool) -> SeedResult:
    config = experiment.search.with_search(controllers=["ppo"], seed=seed)
    search = _search(config, directory / "search", progress)
    policy = search.controllers["ppo"].policy
    kd = replace(config.final_distill, seed=seed)
    ce = replace(kd, alpha=1.0, beta=0.0)  # cross-entropy only: no logit or feature distillation
    rows = [Row((BASELINE,), ModelMetrics.of_baseline(search.baseline).values())]
    jobs = [
        (label, (config, ablated(policy, prune, quantize), kd if distil else ce, directory / slug))
        for label, slug, prune, quantize, distil in ABLATION
    ]
    if on_ray(experiment):
        _say(progress, f"[ablation] {len(jobs)} fine-tunes as Ray tasks ...")
        found = run_tasks(experiment, _compress, [(label, (*args, None, False)) for label, args in jobs])
        done = [found[label] for label, _ in jobs]
    else:
        done = []
        with open_device(config.device) as device:
            for label, args in jobs:
                _say(progress, f"[ablation] {label} ...")
                done.append(_compress(*args, device, progress))
    rows += [
        Row((label,), ModelMetrics.of_final(d.compressed).values()) for (label, _), d in zip(jobs, done, strict=True)
    ]
    return SeedResult(seed, tuple(rows), {}, (_run_dir(directory / "search", directory),))


ABLATION_DOC = (
    "One policy, the one PPO finds (its search's best), taken apart; every row is applied to the same FP32 "
    "teacher and fine-tuned for final_distill epochs. P: the policy's keep-ratios, every layer FP32, fine-tuned "
    "with cross-entropy only. Q: no pruning (keep 1.0), the policy's precisions, cross-entropy. D: no pruning, "
    "FP32, fine-tuned by distillation from the teacher: the uncompressed network, so the row shows what the "
    "fine-tune alone does. P+Q: keep-ratios and precisions, cross-entropy. P+D: keep-ratios, FP32, distillation. "
    "P+Q+D: the policy as found, distillation (hadmc). Distillation: alpha * CE + (1 - alpha) T^2 KL + beta * "
    "feature MSE (final_distill's alpha, beta, T); cross-entropy only: alpha 1, beta 0."
)


# --- controllers: PPO vs HiReLC vs DQN (and random search) ------------------------------------

CONTROLLERS = ("ppo", "hirelc", "dqn", "random")
BEST_REWARD = Column("best_reward", "best reward")
FINAL_ORT_ACCURACY = Column("test_accuracy_onnxruntime", "final test accuracy (onnxruntime)", "%")
FINAL_SPEEDUP = Column("speedup", "final speedup", "x")
FINAL_STORAGE_CR = Column("storage_compression_ratio", "final effective storage compression (HiReLC's CR)", "x")
CONTROLLER_COLUMNS = (
    BEST_REWARD,
    Column("mean_reward", "mean reward"),
    Column("best_episode", "episode of the best (1-based)", "#"),
    Column("best_val_accuracy", "its validation accuracy", "%"),
    Column("test_accuracy", "final test accuracy (torch)", "%"),
    FINAL_ORT_ACCURACY,
    Column("latency_ms", "final measured latency (ms)", "ms"),
    FINAL_SPEEDUP,
    FINAL_STORAGE_CR,
)


def controllers(experiment: Experiment, seed: int, directory: Path, progress: bool) -> SeedResult:
    from host.report.load import load_run
    from host.report.plots import running_best

    config = experiment.search.with_search(controllers=list(CONTROLLERS), seed=seed)
    summary = _search(config, directory / "search", progress)
    run = load_run(directory / "search")
    rows, curves = [], {}
    for name in CONTROLLERS:
        episodes = sorted((e for e in run.episodes if e.controller == name), key=lambda e: e.episode)
        best = max(episodes, key=lambda e: e.reward)
        final = ModelMetrics.of_final(summary.controllers[name])
        rows.append(
            Row(
                (name,),
                {
                    "best_reward": best.reward,
                    "mean_reward": statistics.fmean(e.reward for e in episodes),
                    "best_episode": best.episode + 1.0,
                    "best_val_accuracy": best.val_accuracy,
                    "test_accuracy": final.test_accuracy,
                    "test_accuracy_onnxruntime": final.test_accuracy_onnxruntime,
                    "latency_ms": final.latency_ms,
                    "speedup": final.speedup,
                    "storage_compression_ratio": final.storage_compression_ratio,
                },
            )
        )
        curves[f"{name}/reward"] = tuple(e.reward for e in episodes)
        curves[f"{name}/best_reward"] = tuple(running_best([e.reward for e in episodes]))
        curves[f"{name}/val_accuracy"] = tuple(e.val_accuracy for e in episodes)
    return SeedResult(seed, tuple(rows), curves, (_run_dir(directory / "search", directory),))


CONTROLLERS_DOC = (
    "One search, the same episodes for each controller: PPO over the joint action (hadmc), HiReLC's hierarchical "
    "ensembles (one active-learning cycle an episode), a DQN over a "
    "discretised joint action (keep-ratio bins x precisions) and random search. Rewards are of each episode's "
    "policy after its short fine-tune, on the validation split; the final columns are of the controller's best "
    "policy after the full fine-tune, on the test split, measured on the device."
)


# --- hirelc-ablation: HiReLC's parts removed one at a time --------------------------------------

HIRELC_VARIANTS: dict[str, dict[str, object]] = {
    "full": {},
    "no HLA (uniform budgets)": {"hierarchy": False},
    "single policy": {"lla_members": ["ppo"], "lla_styles": ["moderate"]},
    "homogeneous A2C": {"lla_members": ["a2c", "a2c", "a2c"]},
    "sensitivity off": {"sensitivity": False},
}
HIRELC_COLUMNS = (
    BEST_REWARD,
    Column("best_val_accuracy", "validation accuracy of the best episode", "%"),
    FINAL_ORT_ACCURACY,
    Column("accuracy_drop", "final drop against the FP32 baseline (onnxruntime)", "%"),
    FINAL_SPEEDUP,
    FINAL_STORAGE_CR,
    Column("surrogate_mae", "surrogate MAE after the last cycle", "%"),
)


def hirelc_ablation(experiment: Experiment, seed: int, directory: Path, progress: bool) -> SeedResult:
    from host.report.load import load_run

    rows, runs = [], []
    base = experiment.search.with_search(controllers=["hirelc"], seed=seed)
    jobs = [
        (
            f"seed {seed}: {variant}",
            replace(base, hirelc=replace(base.hirelc, **changes)),
            directory / f"variant{index}",
        )
        for index, (variant, changes) in enumerate(HIRELC_VARIANTS.items())
    ]
    summaries = _searches(experiment, "hirelc-ablation", jobs, progress)
    for variant, (_, _, out), summary in zip(HIRELC_VARIANTS, jobs, summaries, strict=True):
        episodes = load_run(out).episodes
        best = max(episodes, key=lambda e: e.reward)
        final = summary.controllers["hirelc"]
        ort = final.test_accuracy_onnxruntime
        fp32 = summary.baseline.test_accuracy_onnxruntime
        last = max(episodes, key=lambda e: e.episode).hirelc
        values = {
            "best_reward": best.reward,
            "best_val_accuracy": best.val_accuracy,
            "test_accuracy_onnxruntime": ort,
            "accuracy_drop": fp32 - ort if ort is not None and fp32 is not None else None,
            "speedup": final.speedup,
            "storage_compression_ratio": final.storage_compression_ratio,
            "surrogate_mae": last.surrogate_mae if last else None,
        }
        rows.append(Row((variant,), {k: float(v) for k, v in values.items() if v is not None}))
        runs.append(_run_dir(out, directory))
    return SeedResult(seed, tuple(rows), {}, tuple(runs))


HIRELC_DOC = (
    "HiReLC's ablations, one search each with the same budget: the full controller; the high-level agents "
    "removed (every block gets the global target); a single PPO policy per block instead of the ensemble; an "
    "ensemble of three A2C policies; the Fisher sensitivity set to 0 (no penalty, no tier correction). Finals are "
    "fine-tuned fully and measured on the device; a variant's missing cell was not measured."
)


# --- cross-dataset --------------------------------------------------------------------------


def cross_dataset(experiment: Experiment, seed: int, directory: Path, progress: bool) -> SeedResult:
    """Each case's search (as Ray tasks where the experiment's work may run there, host/experiment/parallel.py)."""
    jobs = [
        (
            f"{case.model} on {case.data.name}",
            replace(experiment.search, model=case.model, data=case.data).with_search(controllers=["ppo"], seed=seed),
            directory / f"case{i}-{case.data.name}-{case.model}",
        )
        for i, case in enumerate(experiment.settings.cases)
    ]
    searches = _searches(experiment, "cross-dataset", jobs, progress)
    rows, runs = [], []
    for case, (_, _, out), search in zip(experiment.settings.cases, jobs, searches, strict=True):
        data_label = f"{case.data.name} ({case.data.path})" if case.data.path else case.data.name
        rows.append(Row((data_label, case.model, BASELINE), ModelMetrics.of_baseline(search.baseline).values()))
        rows.append(Row((data_label, case.model, HADMC), ModelMetrics.of_final(search.controllers["ppo"]).values()))
        runs.append(_run_dir(out, directory))
    return SeedResult(seed, tuple(rows), {}, tuple(runs))


CROSS_DATASET_DOC = (
    "The same search settings (episodes, fine-tunes, reward, constraint) on each (model, data set) case: the FP32 "
    "baseline trained on it and the final model of the policy PPO finds for it."
)


# --- cross-device ----------------------------------------------------------------------------


def _devices(experiment: Experiment) -> list[DeviceConfig]:
    """The [experiment] devices, else embedded agents with each of `device_runtimes`, else with
    each of `device_threads`."""
    settings, base = experiment.settings, experiment.search.device
    if settings.devices:
        return [replace(base, name=name) for name in settings.devices]
    if settings.device_runtimes:
        return [replace(base, name="", runtime=runtime) for runtime in settings.device_runtimes]
    return [replace(base, name="", threads=threads) for threads in settings.device_threads]


def device_labels(experiment: Experiment) -> list[str]:
    """A short name per device from its fingerprint; devices that share a fingerprint are one
    device to the LUT, so that is an error."""
    labels, seen = [], {}
    for device in _devices(experiment):
        with open_device(device) as agent:
            info = agent.info()
        fingerprint = info.fingerprint
        where = device.describe()
        if info.fingerprint_hash in seen:
            raise ConfigError(
                f"devices {seen[info.fingerprint_hash]} and {where} have the same fingerprint "
                f"{info.fingerprint_hash[:16]}: they are one device to the LUT; give devices that "
                "differ (another machine, provider or thread count)"
            )
        seen[info.fingerprint_hash] = where
        provider = fingerprint.execution_provider.removesuffix("ExecutionProvider")
        threads = fingerprint.intra_op_threads
        labels.append(
            f"{fingerprint.runtime} {provider} {fingerprint.inference_precision}, {threads} "
            f"thread{'s' if threads != 1 else ''} [{info.fingerprint_hash[:8]}]"
        )
    return labels


def _prepare_cross_device(experiment: Experiment, progress: bool) -> Experiment:
    for label in device_labels(experiment):
        _say(progress, f"[cross-device] device {label}")
    return experiment


def cross_device(experiment: Experiment, seed: int, directory: Path, progress: bool) -> SeedResult:
    """Each device's search (as Ray tasks when every device is remote, host/experiment/parallel.py),
    then every final policy measured on every device, one device at a time."""
    devices, labels = _devices(experiment), device_labels(experiment)
    jobs = [
        (
            f"search for {label}",
            replace(experiment.search, device=device).with_search(controllers=["ppo"], seed=seed),
            directory / f"device{i}",
        )
        for i, (device, label) in enumerate(zip(devices, labels, strict=True))
    ]
    # Two agents on one machine would disturb each other's measurements.
    searches = _searches(experiment, "cross-device", jobs, progress, parallel=on_separate_machines(experiment))
    models, runs = [], []
    for label, (_, _, out), search in zip(labels, jobs, searches, strict=True):
        final = search.controllers["ppo"]
        precisions = {action.precision for action in final.policy.layers.values()}
        models.append((label, out / final.onnx, precisions))
        runs.append(_run_dir(out, directory))
    fp32 = directory / "device0" / "final" / "baseline_fp32.onnx"
    rows = []
    for device, on in zip(devices, labels, strict=True):
        _say(progress, f"[cross-device] measuring every policy on {on} ...")
        with Workbench.open(replace(experiment.search, device=device)) as bench:
            rows += measure_on(bench, on, fp32, models, progress)
    return SeedResult(seed, tuple(rows), {}, tuple(runs))


# A final model: the label of the device it was searched for, its ONNX file, the precisions its layers use.
FinalModel = tuple[str, Path, set[Precision]]


def measure_on(bench: Workbench, on: str, fp32: Path, models: list[FinalModel], progress: bool) -> list[Row]:
    """The FP32 model and every final model on device `on` (that bench's), a row each: measured
    latency paired with the FP32 model, predicted latency, accuracy on the device, and each against
    the device's own policy. A model with a precision the device does not run is not sent there."""
    measured, lacking = {}, {}
    for name, path, precisions in ((BASELINE, fp32, {Precision.FP32}), *models):
        missing = precisions - set(bench.device_precisions())
        if missing:  # e.g. a bf16 layer on onnxruntime's CPU provider, which has no bf16 kernels
            _say(progress, f"[cross-device] {on} cannot run {name}'s policy: no {_names(missing)} there")
            lacking[name] = {"runs_on_device": 0.0}
            continue
        paired = bench.paired(path, fp32)
        measured[name] = {
            "latency_ms": paired.model.record_ms,
            "speedup": paired.speedup,
            "predicted_latency_ms": bench.predict(path).latency_ms,
            "test_accuracy_onnxruntime": bench.device_accuracy(path),
            "runs_on_device": 1.0,
        }
    return [
        Row((name, on), lacking.get(name) or {**measured[name], **_against_own(measured, name, on)})
        for name in (BASELINE, *(label for label, _, _ in models))
    ]


def _names(precisions: set[Precision]) -> str:
    return ", ".join(sorted(p.value for p in precisions))


# Within this many points of test accuracy, two policies count as equally accurate.
EQUAL_ACCURACY = 0.005


def _against_own(measured: dict[str, dict[str, float]], name: str, on: str) -> dict[str, float]:
    """How policy `name` fares on device `on` against the policy searched for `on`: its latency
    over the own policy's (above 1: the own policy is faster), and whether the claim "the own
    policy is the best for this device at equal accuracy" holds in this cell (1 or 0; the claim
    is not at stake where the other policy is less accurate, or for the own policy itself)."""
    own, this = measured.get(on), measured[name]
    if own is None or name in (on, BASELINE):
        return {}
    ratio = this["latency_ms"] / own["latency_ms"]
    at_stake = this["test_accuracy_onnxruntime"] >= own["test_accuracy_onnxruntime"] - EQUAL_ACCURACY
    return {"latency_vs_own_policy": ratio, **({"own_policy_best": float(ratio >= 1.0)} if at_stake else {})}


DEVICE_COLUMNS = (
    Column("latency_ms", "measured latency (ms)", "ms"),
    Column("speedup", "speedup over FP32 on that device", "x"),
    Column("predicted_latency_ms", "predicted latency (that device's LUT, ms)", "ms"),
    Column("test_accuracy_onnxruntime", "test accuracy (on that device's runtime)", "%"),
    Column("latency_vs_own_policy", "latency / that device's own policy's latency", "x"),
    Column("own_policy_best", "own policy fastest at equal accuracy (1 holds, 0 fails)", "#"),
    Column("runs_on_device", "runs there (1; 0: a precision that device lacks)", "#"),
)

CROSS_DEVICE_DOC = (
    "A PPO search for each device, against that device's LUT (on one machine, agents with different intra-op "
    "thread counts have different fingerprints, so they are different devices). Then every final model, and the "
    "FP32 model, is benchmarked on every device, in turn with the FP32 model (benchmark_rounds rounds; speedup: "
    "the ratio of the median rounds; the FP32 row against itself shows the noise): row 'policy searched for' X, "
    "column 'measured on' Y. The hardware-aware claim holds where each column's lowest measured latency lies on its "
    "diagonal; per cell, 'latency / own policy' is measured (above 1: the device's own policy is faster) and "
    "'own policy fastest' says whether the claim holds there (1) or not (0) against every policy at most 0.5 "
    "points less accurate (a less accurate policy leaves the cell empty: it is not a rival at equal accuracy). A "
    "policy with a precision a device does not run (bf16 layers on onnxruntime's CPU provider) is not run there: "
    "its cell says so (runs there: 0) and it is no rival. "
    "Each device's FP32 reference is the FP32 model as that device runs it by default (OpenVINO: bf16 where the "
    "CPU has it). Read speedups down a column with care: each row's is against its own FP32 rounds, and a large FP32 "
    "model's latency can drift more between rows than a small model's does."
)


# --- the registry -------------------------------------------------------------------------------

RunSeed = Callable[[Experiment, int, Path, bool], SeedResult]
Prepare = Callable[[Experiment, bool], Experiment]


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    rows_doc: str
    labels: tuple[str, ...]
    columns: tuple[Column, ...]
    run_seed: RunSeed
    prepare: Prepare | None = None  # resolves what needs the device, before any seed runs
    reference: tuple[str, ...] | None = None  # the row every other is tested against, paired by seed
    tested: tuple[str, ...] = ()  # the metrics those tests compare


STUDY = {
    study.name: study
    for study in (
        Study(
            "sota",
            "Joint vs single-technique and sequential methods (the paper's Table 2)",
            SOTA_DOC,
            ("method",),
            MODEL_COLUMNS,
            sota,
            _prepare_sota,
            reference=(HADMC,),
            tested=MODEL_TESTED,
        ),
        Study(
            "ablation",
            "Ablation: pruning, quantization and distillation (the paper's Table 3)",
            ABLATION_DOC,
            ("variant",),
            MODEL_COLUMNS,
            ablation,
        ),
        Study(
            "controllers",
            "Controllers: PPO vs HiReLC vs DQN vs random search",
            CONTROLLERS_DOC,
            ("controller",),
            CONTROLLER_COLUMNS,
            controllers,
            reference=("ppo",),
            tested=("best_reward", "speedup", "test_accuracy_onnxruntime"),
        ),
        Study(
            "hirelc-ablation",
            "HiReLC ablation: hierarchy, ensemble and sensitivity",
            HIRELC_DOC,
            ("variant",),
            HIRELC_COLUMNS,
            hirelc_ablation,
            reference=("full",),
            tested=("best_reward", "test_accuracy_onnxruntime"),
        ),
        Study(
            "cross-dataset",
            "Across data sets",
            CROSS_DATASET_DOC,
            ("data", "model", "model version"),
            MODEL_COLUMNS,
            cross_dataset,
        ),
        Study(
            "cross-device",
            "Across devices: each device's policy measured on every device",
            CROSS_DEVICE_DOC,
            ("policy searched for", "measured on"),
            DEVICE_COLUMNS,
            cross_device,
            _prepare_cross_device,
        ),
    )
}
