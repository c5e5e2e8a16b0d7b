"""`hadmc search`: controllers propose policies, each is compressed, fine-tuned briefly, scored
by validation accuracy and LUT latency; the best policy of each controller is then trained
longer, exported, verified in onnxruntime on the device and benchmarked there.

The run directory holds everything (records in host/runs.py): config.json, device.json,
baseline.json, episodes.jsonl, checkpoints/ (controller state after every episode: `--resume`
continues with no episode lost or repeated), final/<controller>/ (policy, ONNX, benchmark,
result.json), summary.json and report.html.
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from host.compress.distill import DistillConfig
from host.compress.export import ExportedModel
from host.compress.policy import Policy
from host.progress import Progress
from host.runs import (
    Baseline,
    DeviceRecord,
    EpisodeFailure,
    EpisodeLog,
    EpisodeRow,
    FinalModel,
    LutPrior,
    LutSpace,
    PrecisionSupport,
    RunFileError,
    SearchSummary,
    SelectionFloor,
    read_config,
    read_record,
    write_bytes,
    write_config,
    write_json,
    write_record,
)
from host.search.allocate import Damage, groups_of, measure_damage, proposal_keeps, proposals
from host.search.alternatives import ALTERNATIVES, DEFAULT_ALTERNATIVES, check_openvino_default, run_alternatives
from host.search.budget import LatencyEstimator, latency_estimator, latency_shares, search_constraint
from host.search.controllers import Controller
from host.search.evaluate import Evaluator
from host.search.hirelc.blocks import find_blocks, fisher_sensitivity, take
from host.search.hirelc.controller import HiReLCConfig, HiReLCStart, check_allowed_drop
from host.search.hirelc.proxy import LogitProxy
from host.search.loop import Episode, Failed, Recorder, RewardReference, run_episodes
from host.search.ppo import PPOConfig
from host.search.prior import dropped, lut_choices
from host.search.registry import CONTROLLERS, PPOStart, make_controller
from host.search.reward import RewardConfig, reward
from host.search.scale import ScaleSettings, open_scorer, ray_session
from host.search.select import SelectConfig, Selection, fastest_unpruned, fine_tuned, select, unpruned_per_layer
from host.search.space import ParamCounter, SearchSpace, describe_layers
from host.search.surrogate import RewardSurrogate, layer_sensitivity
from host.workbench import BenchConfig, Workbench
from lut_store.precision import Precision
from lut_store.tomlfile import ConfigError, from_mapping, read_toml


@dataclass(frozen=True)
class SearchSettings:
    """`[search]`: the controllers, their budget and the space they search."""

    controllers: list[str] = field(default_factory=lambda: ["ppo"])
    episodes: int = 15  # per controller
    episode_samples: int = 384  # training images per episode's fine-tune
    precisions: list[Precision] = field(default_factory=list)  # empty: every precision the device runs
    min_keep: float = 0.2  # pruning ratio at most 0.8
    max_keep: float = 0.9  # pruning ratio at least 0.1
    # An AMC-style constraint on every policy (0: none; set at most one): a parameter target as a
    # fraction of the baseline's (0.25: 75% fewer), or a latency budget on the LUT estimate.
    max_params_fraction: float = 0.0
    latency_budget_ms: float = 0.0
    # Before the first episode, drop each layer's precisions the LUT shows to be dominated on the
    # reward's terms and give controllers the LUT's speed of each precision (host/search/prior.py).
    lut_prior: bool = True
    # PPO's first episodes: this many sensitivity-aware proposals from the LUT (at most all but one
    # episode), and PPO starts from the best of them (host/search/allocate.py); 0: from scratch.
    warm_start: int = 4
    # The one-command baselines measured beside the final models (host/search/alternatives.py).
    alternatives: list[str] = field(default_factory=lambda: list(DEFAULT_ALTERNATIVES))
    # The OpenVINO agent of the openvino-default alternative, on the search device's machine: a
    # devices-file name or HOST:PORT (empty: an embedded one, beside an embedded search device).
    openvino_device: str = ""
    seed: int = 0
    # Episodes proposed together and scored concurrently by the [scale] backend (1: one at a time).
    parallel_episodes: int = 1


@dataclass(frozen=True)
class SearchConfig(BenchConfig):
    """A search's TOML: the workbench's tables, [search], the fine-tunes, the reward and PPO."""

    search: SearchSettings = SearchSettings()
    # One gentle epoch after BN re-estimation: at lr 1e-3 an epoch wrecks a BN-folded network
    # (ResNet18 keep 0.9 int8: 96% -> 32% val accuracy; at 3e-4: 94%), and a short fine-tune must
    # rank policies, not train them (keep 0.9 / 0.7 / 0.5 / 0.3 int8: 94 / 95 / 93 / 73%).
    episode_distill: DistillConfig = DistillConfig(epochs=1, lr=3e-4)
    final_distill: DistillConfig = DistillConfig(epochs=20)
    reward: RewardConfig = RewardConfig()
    select: SelectConfig = SelectConfig()
    ppo: PPOConfig = PPOConfig()
    scale: ScaleSettings = ScaleSettings()
    hirelc: HiReLCConfig = HiReLCConfig()

    def with_search(self, **changes: Any) -> SearchConfig:
        """This config with [search] settings replaced (controllers, seed, ...)."""
        return replace(self, search=replace(self.search, **changes))

    def check(self) -> None:
        """Every problem that can be found before any work, each with what to do."""
        s = self.search
        self._check_budget()
        odd = [a for a in s.alternatives if a not in ALTERNATIVES]
        if odd:
            raise ConfigError(f"alternatives {odd}: choose among {', '.join(ALTERNATIVES)} (or [] for none)")
        if "openvino-default" in s.alternatives and self.device.name and not s.openvino_device:
            raise ConfigError(
                f"alternative openvino-default runs the FP32 model on OpenVINO beside device {self.device.name!r}: "
                "name an OpenVINO agent on that machine in [search] openvino_device"
            )
        if s.openvino_device and "openvino-default" not in s.alternatives:
            raise ConfigError("openvino_device is the OpenVINO agent of openvino-default: add it to alternatives")
        try:
            self.hirelc.check()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        unknown = [c for c in s.controllers if c not in CONTROLLERS]
        if unknown or not s.controllers:
            raise ConfigError(f"controllers {unknown or '[]'}: choose among {', '.join(CONTROLLERS)}")
        if s.max_params_fraction and s.latency_budget_ms:
            raise ConfigError("set max_params_fraction or latency_budget_ms, not both: a search bounds one constraint")
        if not 0.0 <= s.max_params_fraction <= 1.0 or s.latency_budget_ms < 0:
            raise ConfigError(
                f"max_params_fraction = {s.max_params_fraction} must lie in (0, 1] and latency_budget_ms = "
                f"{s.latency_budget_ms} must be positive (0: no constraint)"
            )
        if "haq" in s.controllers and not s.latency_budget_ms:
            raise ConfigError("controller haq searches precisions under a latency budget: set latency_budget_ms")
        if "amc" in s.controllers and not (s.max_params_fraction or s.latency_budget_ms):
            raise ConfigError(
                "controller amc prunes to a target: set max_params_fraction (e.g. 0.25 for 75% fewer "
                "parameters) or latency_budget_ms"
            )

    def _check_budget(self) -> None:
        """The episodes, their batches and samples, and where they run."""
        s = self.search
        if s.episodes < 1:
            raise ConfigError(f"episodes = {s.episodes}: a search needs at least one episode")
        if not 1 <= s.parallel_episodes <= s.episodes:
            raise ConfigError(f"parallel_episodes = {s.parallel_episodes}: give 1 .. the episode budget ({s.episodes})")
        if s.warm_start < 0:
            raise ConfigError(f"warm_start = {s.warm_start}: give a number of proposals (0: none)")
        if s.episode_samples < self.data.batch_size:
            raise ConfigError(
                f"episode_samples = {s.episode_samples} is below [data] batch_size {self.data.batch_size}"
            )
        self.scale.check()


def load_search_config(path: Path | None, overrides: dict[str, Any] | None = None) -> SearchConfig:
    """The TOML at `path` (defaults without one), its tables updated by `overrides` table by table."""
    doc = read_toml(path, "config", ConfigError) if path is not None else {}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            doc[key] = {**doc.get(key, {}), **{k: v for k, v in value.items() if v is not None}}
        elif value is not None:
            doc[key] = value
    config = from_mapping(SearchConfig, doc)
    config.check()
    return config


def run_search(config: SearchConfig, out: Path, resume: bool = False, progress: bool = True) -> SearchSummary:
    """The whole search; returns summary.json's record."""
    t_start = time.monotonic()
    config = _start(config, out, resume)
    shown = Progress(progress)
    ray = ExitStack()
    if config.scale.backend == "ray":
        # Started first: Ray's daemons are then forked from a process without gRPC channels or
        # torch threads, and stopped (below) before the final models are measured.
        ray.enter_context(ray_session(config.scale))
    with ray, Workbench.open(config, shown) as bench:
        reference = bench.export_reference(out / "final" / "baseline_fp32.onnx")
        baseline = _fresh_lut(bench, _baseline(bench, reference, out), reference, out)
        precisions = _device(bench, config, out)
        if "openvino-default" in config.search.alternatives:
            check_openvino_default(bench, config.search.openvino_device)
        space = _space(bench, config, precisions, reference)
        evaluator = Evaluator(
            bench,
            bench.distill_set(config.episode_distill),
            out / "checkpoints",
            config.episode_distill,
            config.search.episode_samples,
        )
        counter = ParamCounter(bench.teacher, bench.example, config.compress.round_to)
        space, estimator = _prior(bench, config, space, counter, out, resume)
        config = _accuracy_reference(config, space, evaluator, out)
        controllers = _controllers(bench, config, space, baseline, evaluator, counter, estimator, out)
        rows = _run_controllers(config, controllers, evaluator, baseline, out, resume, shown)
        ray.close()
        floor = _selection_floor(bench, config, space, out)
        finals = {name: _final(bench, config, rows, baseline, out, name, floor) for name in controllers}
        for path in (reference.path, *(out / final.onnx for final in finals.values())):
            bench.register(path)  # the device's nightly re-profile keeps their kernels fresh
        budget_ms = config.search.latency_budget_ms or next(iter(finals.values())).predicted_latency_ms
        alternatives = run_alternatives(
            bench, config.search.alternatives, space, out, reference, budget_ms, config.search.openvino_device
        )
    versions = {v for r in rows for v in r.lut_version_ids} | ({bench.sealed.id} if bench.sealed else set())
    summary = SearchSummary(
        baseline,
        finals,
        tuple(sorted(versions)),
        time.monotonic() - t_start,
        config.search.episodes,
        alternatives,
    )
    write_record(out / "summary.json", summary)
    from host.report import build_report

    shown.say(f"report: {build_report(out)}")
    return summary


def _start(config: SearchConfig, out: Path, resume: bool) -> SearchConfig:
    """The run's config (on resume: the one stored in `out`), checked and written to config.json."""
    if resume:
        if not (out / "config.json").exists():
            raise ConfigError(f"--resume: {out} has no config.json; it is not a search run directory")
        config = read_config(out / "config.json", SearchConfig)
    elif (out / "episodes.jsonl").exists():
        raise ConfigError(f"{out} already holds a search; pass --resume to continue it or choose another --out")
    config.check()
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out / "final").mkdir(exist_ok=True)
    write_config(out / "config.json", config)
    return config


def _baseline(bench: Workbench, reference: ExportedModel, out: Path) -> Baseline:
    """The FP32 reference measured at the start of the search (kept in baseline.json)."""
    path = out / "baseline.json"
    if path.exists():
        return read_record(path, Baseline)
    baseline = bench.baseline(reference.path)
    write_record(path, baseline)
    return baseline


def _fresh_lut(bench: Workbench, baseline: Baseline, reference: ExportedModel, out: Path) -> Baseline:
    """The baseline on a LUT checked against the device (`Workbench.check_lut_drift`); after a re-profile
    its prediction is rewritten in baseline.json. On resume the check reads the LUT as it is now."""
    measured = baseline.measured_latency.record_ms
    if not bench.check_lut_drift(reference.path, measured):
        return baseline
    fresh = replace(baseline, predicted_latency_ms=bench.predict(reference.path).latency_ms)
    write_record(out / "baseline.json", fresh)
    return fresh


def _device(bench: Workbench, config: SearchConfig, out: Path) -> tuple[Precision, ...]:
    """Write device.json; the precisions to search (the config's, else every one the device runs)."""
    from host.agent_client import message_dict

    info = bench.device.info()
    precisions = tuple(
        PrecisionSupport(Precision.from_proto(p.precision), p.supported, p.note) for p in info.precisions
    )
    endpoint = bench.device.endpoint
    address = "embedded" if endpoint.name == "embedded" else endpoint.address
    record = DeviceRecord(info.fingerprint_hash, message_dict(info.fingerprint), precisions, address, endpoint)
    write_record(out / "device.json", record)
    return precisions_to_search(config, bench)


def precisions_to_search(config: SearchConfig, bench: Workbench) -> tuple[Precision, ...]:
    """The precisions to search: the config's, else every one the device runs."""
    return tuple(config.search.precisions) or bench.device_precisions()


def _space(
    bench: Workbench, config: SearchConfig, precisions: tuple[Precision, ...], reference: ExportedModel
) -> SearchSpace:
    """The search space over the teacher's layers, with each layer's share of the FP32 latency."""
    layers = describe_layers(bench.teacher, bench.example, bench.layer_limits())
    s = config.search
    try:
        space = SearchSpace(config.model, layers, precisions, s.min_keep, s.max_keep)
        return latency_shares(space, bench.predict(reference), reference.layer_nodes)
    except ValueError as exc:  # a bad keep range
        raise ConfigError(str(exc)) from None


def _prior(
    bench: Workbench, config: SearchConfig, space: SearchSpace, counter: ParamCounter, out: Path, resume: bool
) -> tuple[SearchSpace, LatencyEstimator | None]:
    """The LUT's latency estimator when something needs it, and the space its prior narrowed (on
    resume: the space as the run's start saw it, `_as_started`)."""
    s = config.search
    practise = "ppo" in s.controllers and config.ppo.surrogate_episodes > 0
    hirelc = "hirelc" in s.controllers and config.hirelc.latency_weight > 0
    estimator = (
        latency_estimator(space, counter, bench, out / "checkpoints")
        if s.latency_budget_ms or practise or hirelc or s.lut_prior or (s.warm_start and "ppo" in s.controllers)
        else None
    )
    if s.lut_prior and estimator is not None:
        space = lut_choices(space, estimator, counter, size_matters=config.reward.size_weight > 0)
    space = _as_started(space, out, resume)
    if space.allowed:
        write_record(out / "prior.json", LutPrior(dropped(space)))
        bench.progress.say(f"LUT prior: {_prior_text(space)}")
    return space, estimator


def _as_started(space: SearchSpace, out: Path, resume: bool) -> SearchSpace:
    """`space` with its LUT-derived part written to space.json; on resume, that part read back
    instead (the LUT may have changed since the start: the restored controllers' states and masks
    must not)."""
    path = out / "space.json"
    layers = tuple(layer.name for layer in space.layers)
    if not (resume and path.exists()):
        write_record(path, LutSpace(layers, space.precisions, space.latency_share, space.allowed, space.speed))
        return space
    started = read_record(path, LutSpace)
    if started.layers != layers or started.precisions != space.precisions:
        raise RunFileError(
            f"{path}: this search started over precisions {[p.value for p in started.precisions]} and "
            f"{len(started.layers)} layers; it now has {[p.value for p in space.precisions]} and {len(layers)} "
            "(the device or the model changed since): start a new search"
        )
    try:
        return replace(space, latency_share=started.latency_share, allowed=started.allowed, speed=started.speed)
    except ValueError as exc:
        raise RunFileError(f"{path}: {exc}") from None


def _accuracy_reference(config: SearchConfig, space: SearchSpace, evaluator: Evaluator, out: Path) -> SearchConfig:
    """With a tolerance reward: the unpruned network at its fastest allowed precisions scored like
    an episode, as the reward's accuracy_reference (checkpoints/accuracy_reference.json, once)."""
    if config.reward.accuracy_tolerance <= 0:
        return config
    path = out / "checkpoints" / "accuracy_reference.json"
    if path.exists():
        reference = read_record(path, SelectionFloor)
    else:
        policy = unpruned_per_layer(space)
        evaluator.bench.progress.say("the reward's reference: the unpruned network at its fastest precisions ...")
        result = evaluator(policy, 0)
        reference = SelectionFloor(policy, config.reward.fidelity(result.val_accuracy, result.val_kl))
        write_record(path, reference)
    return replace(config, reward=replace(config.reward, accuracy_reference=reference.val_accuracy))


def _controllers(
    bench: Workbench,
    config: SearchConfig,
    space: SearchSpace,
    baseline: Baseline,
    evaluator: Evaluator,
    counter: ParamCounter,
    estimator: LatencyEstimator | None,
    out: Path,
) -> dict[str, Controller]:
    """Each controller, under the config's constraint, over the space the LUT prior narrowed; PPO
    with its reward surrogate when it practises, and its warm start."""
    s = config.search
    practise = "ppo" in s.controllers and config.ppo.surrogate_episodes > 0
    controllers: dict[str, Controller] = {}
    proposals = _proposals(bench, config, space, evaluator, estimator, out) if "ppo" in s.controllers else []
    try:
        constraint = search_constraint(s.max_params_fraction, s.latency_budget_ms, counter, baseline.params, estimator)
        for i, name in enumerate(s.controllers):
            surrogate = None
            if name == "ppo" and estimator is not None and practise:
                names = [layer.name for layer in space.layers]
                sensitivity = layer_sensitivity(bench.teacher, evaluator.loader(0), names)
                surrogate = RewardSurrogate(
                    space,
                    counter,
                    estimator,
                    sensitivity,
                    baseline.predicted_latency_ms,
                    baseline.fp32_size_bytes,
                    config.reward,
                )
            start: PPOStart | HiReLCStart | None = None
            if name == "ppo":
                start = PPOStart(surrogate, proposals)
            elif name == "hirelc":
                start = _hirelc_start(bench, config, space, evaluator, baseline, estimator)
            controllers[name] = make_controller(name, space, config.ppo, s.seed + 1000 * i, constraint, start=start)
    except ValueError as exc:  # a budget no policy can meet, or a setting hirelc refuses
        raise ConfigError(str(exc)) from None
    return controllers


def _hirelc_start(
    bench: Workbench,
    config: SearchConfig,
    space: SearchSpace,
    evaluator: Evaluator,
    baseline: Baseline,
    estimator: LatencyEstimator | None,
) -> HiReLCStart:
    """HiReLC's blocks, their Fisher sensitivity and the logit proxy's cached calibration set,
    from the first training images; an error when the uncompressed model, its BatchNorm folded,
    already loses more validation accuracy than the allowed drop."""
    c = config.hirelc
    blocks = find_blocks(bench.teacher, space)
    x, y = take(evaluator.loader(0), max(c.fisher_samples, c.calibration_samples))
    sensitivity = fisher_sensitivity(bench.teacher, [(x, y)], blocks, c.fisher_samples)
    unpruned = Policy.uniform(config.model, [layer.name for layer in space.layers], 1.0, Precision.FP32)
    folded, _ = bench.compress(unpruned, evaluator.loader(0))
    check_allowed_drop(baseline.val_accuracy, bench.fidelity(folded, "val").accuracy, c.max_drop)
    proxy = LogitProxy(copy.deepcopy(bench.teacher), x[: c.calibration_samples], config.compress.round_to)
    return HiReLCStart(
        c,
        blocks,
        sensitivity,
        proxy,
        estimator,
        baseline.predicted_latency_ms,
        baseline.val_accuracy,
        -(-config.search.episodes // config.search.parallel_episodes),  # a cycle per batch
    )


def _proposals(
    bench: Workbench,
    config: SearchConfig,
    space: SearchSpace,
    evaluator: Evaluator,
    estimator: LatencyEstimator | None,
    out: Path,
) -> list[Policy]:
    """PPO's warm start: each pruning group's damage measured once (checkpoints/damage.json), and
    `warm_start` allocations of the LUT's milliseconds under uniform policies' damage."""
    n = min(config.search.warm_start, config.search.episodes - 1)
    if n <= 0 or estimator is None:
        return []
    path = out / "checkpoints" / "damage.json"
    if path.exists():
        damage = read_record(path, Damage)
    else:
        bench.progress.say("warm start: each pruning group's damage, pruned alone ...")
        damage = measure_damage(
            bench, space, evaluator.loader(0), (round((space.min_keep + space.max_keep) / 2, 4), space.min_keep)
        )
        write_record(path, damage)
    policies = proposals(space, estimator, damage, proposal_keeps(space, n))
    for policy in policies:
        bench.progress.say(
            f"warm start: {estimator(policy):.3f} ms predicted, keep-ratios {_keeps_text(space, policy)}"
        )
    return policies


def _keeps_text(space: SearchSpace, policy: Policy) -> str:
    """A policy's group keep-ratios in a line."""
    return " ".join(f"{policy.layers[g].keep_ratio:.2f}" for g in groups_of(space))


def _selection_floor(bench: Workbench, config: SearchConfig, space: SearchSpace, out: Path) -> SelectionFloor | None:
    """For `fastest-within`: the unpruned network at its fastest allowed precisions, fine-tuned at
    the selection's fidelity, scored on validation and exported, a candidate of every controller
    (final/floor.json and final/floor.onnx; measured once)."""
    if config.select.top < 2 or config.select.rule != "fastest-within":
        return None
    path = out / "final" / "floor.json"
    if path.exists():
        floor = read_record(path, SelectionFloor)
        if floor.onnx and (out / floor.onnx).exists():
            return floor
    policy = fastest_unpruned(bench, space, out / "final" / "baseline_fp32.onnx", out / "checkpoints")
    bench.progress.say(
        f"selection floor: the unpruned network at its fastest precisions, {config.select.epochs} epochs ..."
    )
    distill = replace(config.final_distill, seed=config.search.seed, epochs=config.select.epochs)
    student = fine_tuned(bench, policy, distill, "the unpruned network")
    scored = bench.fidelity(student, "val")
    exported = bench.export(student, policy, out / "final" / "floor.onnx")
    predicted = bench.predict(exported).latency_ms
    floor = SelectionFloor(
        policy,
        scored.accuracy,
        scored.kl,
        str(exported.path.relative_to(out)),
        predicted,
        len(bench.loaders.val.dataset),
    )
    write_record(path, floor)
    return floor


def _prior_text(space: SearchSpace) -> str:
    """Which precisions the LUT left, layer by layer, in a line."""
    kept: dict[tuple[str, ...], int] = {}
    for t in range(len(space.layers)):
        key = tuple(p.value for p in space.allowed_at(t))
        kept[key] = kept.get(key, 0) + 1
    return "; ".join(f"{n} layer(s) choose among {', '.join(k)}" for k, n in kept.items())


@dataclass
class EpisodeRecorder:
    """Records one controller's episodes: a line in episodes.jsonl for each (failures.jsonl for
    one that failed), the progress line, and after each batch (with `checkpoints`) the
    controller's checkpoint that accounts for them."""

    name: str
    controller: Controller
    log: EpisodeLog[EpisodeRow]
    episodes: int
    shown: Progress
    rows: list[EpisodeRow]
    checkpoints: Path | None = None

    def recorder(self) -> Recorder:
        return Recorder(self.episode, self.failed, self.batch_done)

    def episode(self, episode: Episode) -> None:
        result = episode.result
        notes = self.controller.episode_notes()
        row = EpisodeRow(
            self.name,
            episode.index,
            episode.policy,
            result.latency_ms,
            result.val_accuracy,
            result.params,
            result.size_bytes,
            episode.reward,
            result.lut_version_ids,
            episode.wall_s,
            result.profiled_kernels,
            result.seconds,
            notes.get("surrogate_reward"),
            notes.get("surrogate_episodes_so_far"),
            result.val_agreement,
            result.val_kl,
            bool(notes.get("proposal")),
            notes.get("hirelc"),
        )
        self.log.append(row)
        self.rows.append(row)
        best = max(r.reward for r in self.rows if r.controller == self.name)
        self.shown.context = f"[{self.name}] episode {episode.index + 2}/{self.episodes} (best {best:.4f})"
        self.shown.say(
            f"[{self.name}] episode {episode.index + 1}/{self.episodes}: reward {episode.reward:.4f} "
            f"(best {best:.4f}), val acc {result.val_accuracy:.4f}, {result.latency_ms:.3f} ms predicted, "
            f"{result.params:,} params, {episode.wall_s:.1f} s"
        )

    def failed(self, failed: Failed) -> None:
        failures = EpisodeLog(self.log.path.with_name("failures.jsonl"), EpisodeFailure)
        failures.append(EpisodeFailure(self.name, failed.index, failed.policy, failed.reason))
        self.shown.say(f"[{self.name}] episode {failed.index + 1}/{self.episodes} FAILED, not scored: {failed.reason}")

    def batch_done(self, episodes_done: int) -> None:
        if self.checkpoints is not None:
            buffer = io.BytesIO()
            torch.save({"controller": self.controller.state_dict(), "episodes_done": episodes_done}, buffer)
            write_bytes(self.checkpoints / f"{self.name}.pt", buffer.getvalue())


def _load_controller(controller: Controller, path: Path) -> int:
    """Restore `controller` from its checkpoint; the number of episodes it accounts for."""
    try:
        state = torch.load(path, weights_only=True)
        controller.load_state_dict(state["controller"])
        return int(state["episodes_done"])
    except (RuntimeError, EOFError, OSError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as exc:
        raise RunFileError(
            f"{path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}): "
            "the run cannot resume this controller; delete the file to run its episodes again"
        ) from None


def _run_controllers(
    config: SearchConfig,
    controllers: dict[str, Controller],
    evaluator: Evaluator,
    baseline: Baseline,
    out: Path,
    resume: bool,
    shown: Progress,
) -> list[EpisodeRow]:
    """Every controller's episodes after those its checkpoint holds, in batches of
    `parallel_episodes` scored by the `[scale]` backend; all rows, old and new."""
    done: dict[str, int] = {}
    for name, controller in controllers.items():
        ckpt = out / "checkpoints" / f"{name}.pt"
        if resume and ckpt.exists():
            done[name] = _load_controller(controller, ckpt)
    log = EpisodeLog(out / "episodes.jsonl")
    rows = log.keep(done)
    if (out / "failures.jsonl").exists():
        EpisodeLog(out / "failures.jsonl", EpisodeFailure).keep(done)
    episodes = config.search.episodes
    if all(done.get(name, 0) >= episodes for name in controllers):
        return rows
    scorer = open_scorer(evaluator, config.scale)
    try:
        for name, controller in controllers.items():
            record = EpisodeRecorder(name, controller, log, episodes, shown, rows, out / "checkpoints")
            start = done.get(name, 0)
            best = [r.reward for r in rows if r.controller == name]
            shown.context = f"[{name}] episode {start + 1}/{episodes}" + (f" (best {max(best):.4f})" if best else "")
            reference = RewardReference(baseline.predicted_latency_ms, baseline.fp32_size_bytes)
            parallel = config.search.parallel_episodes
            run_episodes(controller, scorer, episodes, reference, config.reward, start, record.recorder(), parallel)
            if not any(r.controller == name for r in rows):
                raise RunFileError(
                    f"[{name}] no episode was scored: every one failed (reasons in {out / 'failures.jsonl'})"
                )
    finally:
        scorer.close()
    return rows


def _final(
    bench: Workbench,
    config: SearchConfig,
    rows: list[EpisodeRow],
    baseline: Baseline,
    out: Path,
    name: str,
    floor: SelectionFloor | None,
) -> FinalModel:
    """The controller's chosen policy (host/search/select.py), fine-tuned fully, exported, verified
    and benchmarked in turn with the FP32 reference (final/NAME/; a finished one is read back)."""
    directory = out / "final" / name
    directory.mkdir(exist_ok=True)
    if (directory / "result.json").exists():
        return read_record(directory / "result.json", FinalModel)
    bench.progress.context = ""
    distill_config = replace(config.final_distill, seed=config.search.seed)
    reference = RewardReference(baseline.predicted_latency_ms, baseline.fp32_size_bytes)
    own = [r for r in rows if r.controller == name]
    if config.select.top > 1:
        bench.progress.say(f"[{name}] choosing among its best {config.select.top} policies ({config.select.rule}) ...")
    context = Selection(
        distill_config,
        config.reward,
        reference,
        out / "final" / "baseline_fp32.onnx",
        floor,
        out / floor.onnx if floor else None,
    )
    chosen = select(bench, own, config.select, context, out / "checkpoints")
    write_json(directory / "policy.json", json.loads(chosen.policy.to_json()))
    epochs = config.final_distill.epochs
    origin = "the selection floor" if chosen.episode is None else f"episode {chosen.episode}"
    bench.progress.say(f"[{name}] final model: {origin}, fine-tuning {epochs} epochs ...")
    train_set = bench.distill_set(distill_config)
    made = bench.final_model(
        chosen.policy, distill_config, train_set, directory / "model.onnx", out / "final" / "baseline_fp32.onnx"
    )
    write_json(directory / "benchmark.json", made.paired.model_doc)
    write_json(directory / "baseline_benchmark.json", made.paired.baseline_doc)
    score = reward(
        config.reward.fidelity(made.model.val_accuracy, made.model.val_kl),
        made.model.predicted_latency_ms,
        made.model.effective_size_bytes,
        baseline.predicted_latency_ms,
        baseline.fp32_size_bytes,
        config.reward,
    )
    model = replace(
        made.model,
        onnx=str(made.exported.path.relative_to(out)),
        episode=chosen.episode,
        episodes=config.search.episodes,
        reward=score,
        selection=chosen.candidates,
    )
    write_record(directory / "result.json", model)
    return model
