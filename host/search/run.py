"""`hadmc search`: controllers propose policies, each is compressed, fine-tuned briefly, scored
by validation accuracy and LUT latency; the best policy of each controller is then trained
longer, exported, verified in onnxruntime on the device and benchmarked there.

The run directory holds everything (DESIGN.md): config.json, device.json, baseline.json,
episodes.jsonl, checkpoints/ (controller state after every episode: `--resume` continues with
no episode lost or repeated), final/<controller>/ (policy, ONNX, benchmark), summary.json.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from host.agent_client import message_dict
from host.compress.distill import DistillConfig, distill, distill_dataset, distill_loader
from host.compress.export import export_onnx, export_policy_model
from host.compress.pipeline import (
    DataConfig,
    compressed,
    device_accuracy_and_latency,
    device_client,
    paired_latency,
)
from host.compress.policy import Policy
from host.compress.prune import layer_limits
from host.compress.size import size_report
from host.compress.train import TrainConfig, accuracy, trained_baseline
from host.jsonfile import write_json
from host.progress import Progress
from host.search.budget import latency_estimator, latency_shares, search_constraint
from host.search.controllers import Controller
from host.search.evaluate import Evaluator
from host.search.loop import Baseline, Episode, run_episodes
from host.search.ppo import PPOConfig
from host.search.registry import CONTROLLERS, make_controller
from host.search.reward import RewardConfig, reward
from host.search.space import ParamCounter, SearchSpace, describe_layers
from host.search.surrogate import RewardSurrogate, layer_sensitivity
from lut_store.precision import Precision, device_precisions
from lut_store.tomlfile import ConfigError, from_mapping, read_toml


@dataclass(frozen=True)
class SearchConfig:
    model: str = "resnet18"
    data: DataConfig = DataConfig()
    baseline: TrainConfig = TrainConfig()
    controllers: list[str] = field(default_factory=lambda: ["ppo"])
    episodes: int = 15
    episode_samples: int = 384  # training images per episode's fine-tune
    # One gentle epoch after BN re-estimation: at lr 1e-3 an epoch wrecks a BN-folded network
    # (ResNet18 keep 0.9 int8: 96% -> 32% val accuracy; at 3e-4: 94%), and a short fine-tune must
    # rank policies, not train them (keep 0.9 / 0.7 / 0.5 / 0.3 int8: 94 / 95 / 93 / 73%).
    episode_distill: DistillConfig = DistillConfig(epochs=1, lr=3e-4)
    final_distill: DistillConfig = DistillConfig(epochs=20)
    precisions: list[Precision] = field(default_factory=list)  # empty: every precision the device runs
    min_keep: float = 0.2  # pruning ratio at most 0.8
    max_keep: float = 0.9  # pruning ratio at least 0.1
    reward: RewardConfig = RewardConfig()
    # An AMC-style constraint on every policy (0: none; set at most one): a parameter target as a
    # fraction of the baseline's (0.25: 75% fewer), or a latency budget on the LUT estimate.
    max_params_fraction: float = 0.0
    latency_budget_ms: float = 0.0
    ppo: PPOConfig = PPOConfig()
    batch_size: int = 32
    round_to: int = 8
    calibration_batches: int = 2
    benchmark_rounds: int = 3  # interleaved benchmarks of each final and the FP32 model for its speedup
    device: str = ""  # agent address; empty starts an embedded agent
    store: str = ""  # LUT store URL; empty: the SQLite file under $HADMC_HOME
    threads: int = 1  # intra-op threads of an embedded agent
    seed: int = 0

    def check(self) -> None:
        if self.episodes < 1:
            raise ConfigError(f"episodes = {self.episodes}: a search needs at least one episode")
        unknown = [c for c in self.controllers if c not in CONTROLLERS]
        if unknown or not self.controllers:
            raise ConfigError(f"controllers {unknown or '[]'}: choose among {', '.join(CONTROLLERS)}")
        if self.max_params_fraction and self.latency_budget_ms:
            raise ConfigError("set max_params_fraction or latency_budget_ms, not both: a search bounds one constraint")
        if not 0.0 <= self.max_params_fraction <= 1.0 or self.latency_budget_ms < 0:
            raise ConfigError(
                f"max_params_fraction = {self.max_params_fraction} must lie in (0, 1] and "
                f"latency_budget_ms = {self.latency_budget_ms} must be positive (0: no constraint)"
            )
        if "haq" in self.controllers and not self.latency_budget_ms:
            raise ConfigError("controller haq searches precisions under a latency budget: set latency_budget_ms")
        if "amc" in self.controllers and not (self.max_params_fraction or self.latency_budget_ms):
            raise ConfigError(
                "controller amc prunes to a target: set max_params_fraction (e.g. 0.25 for 75% fewer "
                "parameters) or latency_budget_ms"
            )
        if self.episode_samples < self.batch_size:
            raise ConfigError(f"episode_samples = {self.episode_samples} is below batch_size {self.batch_size}")


def load_search_config(path: Path | None, overrides: dict[str, Any] | None = None) -> SearchConfig:
    doc = read_toml(path, "config", ConfigError) if path is not None else {}
    doc.update({k: v for k, v in (overrides or {}).items() if v is not None})
    config = from_mapping(SearchConfig, doc)
    config.check()
    return config


class _Episodes:
    """episodes.jsonl, kept consistent with the checkpoints on resume."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, done: dict[str, int]) -> list[dict[str, Any]]:
        """Episodes the checkpoints account for; a later or torn line (killed mid-write) goes."""
        rows = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if row["episode"] < done.get(row["controller"], 0):
                    rows.append(row)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return rows

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def run_search(config: SearchConfig, out: Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """The whole search; returns summary.json's document."""
    from host.data import load_dataset, make_loaders
    from host.data.loaders import tensor_dataset
    from host.latency.predict import LatencyPredictor
    from host.models import build_model
    from lut_store.store import open_store

    t_start = time.monotonic()
    shown = Progress(progress)
    if resume:
        if not (out / "config.json").exists():
            raise ConfigError(f"--resume: {out} has no config.json; it is not a search run directory")
        config = from_mapping(SearchConfig, json.loads((out / "config.json").read_text()))
    elif (out / "episodes.jsonl").exists():
        raise ConfigError(f"{out} already holds a search; pass --resume to continue it or choose another --out")
    config.check()
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    write_json(out / "config.json", asdict(config))

    with device_client(config.device, config.threads) as client, open_store(config.store or None) as store:
        predictor = LatencyPredictor.for_device(store, client)  # the device answers before any training
        options = {k: v for k, v in asdict(config.data).items() if k != "name" and v != ""}
        data = load_dataset(config.data.name, **options)
        loaders = make_loaders(data, batch_size=config.batch_size, seed=config.data.seed)
        shape = tuple(data.input_shape)
        example = torch.zeros((1, *shape))
        shown.say(f"baseline {config.model} on {data.name} ...")
        teacher, _ = trained_baseline(
            lambda: build_model(config.model, len(data.classes), shape),
            config.model,
            f"{data.cache_id}-s{config.data.seed}",
            loaders.train,
            config.baseline,
            shown.fit("baseline"),
        )
        teacher.eval()

        info = client.info()
        device_doc = {
            "fingerprint_hash": info.fingerprint_hash,
            "fingerprint": message_dict(info.fingerprint),
            "precisions": [
                {
                    "precision": p["precision"].removeprefix("PRECISION_").lower(),
                    "supported": p["supported"],
                    "note": p["note"],
                }
                for p in message_dict(info)["precisions"]
            ],
            "address": config.device or "embedded",
        }
        write_json(out / "device.json", device_doc)
        precisions = tuple(config.precisions) or device_precisions(info)

        final_dir = out / "final"
        final_dir.mkdir(exist_ok=True)
        base_onnx = final_dir / "baseline_fp32.onnx"
        export_onnx(teacher, base_onnx, shape)
        base_pred = predictor.predict(base_onnx)
        if (out / "baseline.json").exists():
            baseline = json.loads((out / "baseline.json").read_text())
        else:
            shown.say("measuring the FP32 baseline on the device ...")
            acc_onnx, bench = device_accuracy_and_latency(client, base_onnx, data.x_test, data.y_test, 1)
            params = sum(p.numel() for p in teacher.parameters())
            baseline = {
                "model": config.model,
                "data": data.name,
                "val_accuracy": accuracy(teacher, loaders.val),
                "test_accuracy": accuracy(teacher, loaders.test),
                "test_accuracy_onnxruntime": acc_onnx,
                "params": params,
                "fp32_size_bytes": 4 * params,
                "predicted_latency_ms": base_pred.latency_ms,
                "measured_latency": bench["latency"],
            }
            write_json(out / "baseline.json", baseline)

        layers = describe_layers(teacher, example, layer_limits(teacher, example))
        try:
            space = latency_shares(
                SearchSpace(config.model, layers, precisions, config.min_keep, config.max_keep), base_pred
            )
        except ValueError as exc:  # a bad keep range, or a model whose layers have no kernel of their own
            raise ConfigError(str(exc)) from None
        train_set = tensor_dataset(data, "train")
        episode_set = distill_dataset(teacher, config.model, train_set, config.episode_distill)
        final_set = (
            episode_set
            if config.final_distill.augment == config.episode_distill.augment
            else distill_dataset(teacher, config.model, train_set, config.final_distill)
        )
        evaluator = Evaluator(
            config.model,
            teacher,
            episode_set,
            loaders.val,
            predictor,
            shape,
            out / "checkpoints",
            config.episode_distill,
            config.episode_samples,
            config.batch_size,
            config.round_to,
            config.calibration_batches,
            progress=shown,
        )
        counter = ParamCounter(teacher, example, config.round_to)
        practise = "ppo" in config.controllers and config.ppo.surrogate_episodes > 0
        estimator = (
            latency_estimator(space, counter, predictor, out / "checkpoints", len(data.classes), shape)
            if config.latency_budget_ms or practise
            else None
        )
        controllers: dict[str, Controller] = {}
        done: dict[str, int] = {}
        try:
            constraint = search_constraint(
                config.max_params_fraction, config.latency_budget_ms, counter, baseline["params"], estimator
            )
            for i, name in enumerate(config.controllers):
                surrogate = None
                if name == "ppo" and estimator is not None and practise:
                    sensitivity = layer_sensitivity(teacher, evaluator.loader(0), [layer.name for layer in layers])
                    surrogate = RewardSurrogate(
                        space,
                        counter,
                        estimator,
                        sensitivity,
                        baseline["predicted_latency_ms"],
                        baseline["fp32_size_bytes"],
                        config.reward,
                    )
                controllers[name] = make_controller(
                    name, space, config.ppo, config.seed + 1000 * i, constraint, surrogate=surrogate
                )
        except ValueError as exc:  # a budget no policy can meet
            raise ConfigError(str(exc)) from None
        for name in config.controllers:
            ckpt = out / "checkpoints" / f"{name}.pt"
            if resume and ckpt.exists():
                state = torch.load(ckpt, weights_only=True)
                controllers[name].load_state_dict(state["controller"])
                done[name] = state["episodes_done"]
        episodes = _Episodes(out / "episodes.jsonl")
        rows = episodes.load(done) if resume else []
        if not resume:
            episodes.path.write_text("")

        base = Baseline(baseline["predicted_latency_ms"], baseline["fp32_size_bytes"])
        for name, controller in controllers.items():
            best = [r["reward"] for r in rows if r["controller"] == name]

            def record(
                episode: Episode, name: str = name, controller: Controller = controller, best: list[float] = best
            ) -> None:
                """One line in episodes.jsonl, then the checkpoint that accounts for it."""
                result = episode.result
                row = {
                    "controller": name,
                    "episode": episode.index,
                    "policy": json.loads(episode.policy.to_json()),
                    "predicted_latency_ms": result.latency_ms,
                    "val_accuracy": result.val_accuracy,
                    "params": result.params,
                    "size_bytes": result.size_bytes,
                    "reward": episode.reward,
                    "lut_version_ids": list(result.lut_version_ids),
                    "wall_s": episode.wall_s,
                    "profiled_kernels": result.profiled_kernels,
                    "seconds": result.seconds,
                    **controller.episode_notes(),
                }
                episodes.append(row)
                rows.append(row)
                tmp = out / "checkpoints" / f"{name}.pt.tmp"
                torch.save({"controller": controller.state_dict(), "episodes_done": episode.index + 1}, tmp)
                os.replace(tmp, out / "checkpoints" / f"{name}.pt")
                best.append(episode.reward)
                shown.context = f"[{name}] episode {episode.index + 2}/{config.episodes} (best {max(best):.4f})"
                shown.say(
                    f"[{name}] episode {episode.index + 1}/{config.episodes}: reward {episode.reward:.4f} "
                    f"(best {max(best):.4f}), val acc {result.val_accuracy:.4f}, {result.latency_ms:.3f} ms "
                    f"predicted, {result.params:,} params, {episode.wall_s:.1f} s"
                )

            start = done.get(name, 0)
            shown.context = f"[{name}] episode {start + 1}/{config.episodes}" + (
                f" (best {max(best):.4f})" if best else ""
            )
            run_episodes(controller, evaluator, config.episodes, base, config.reward, start, record)

        summary_controllers = {}
        for name in controllers:
            summary_controllers[name] = _final_model(
                name, config, rows, teacher, data, loaders, final_set, evaluator, client, final_dir, baseline, shown
            )
        sealed = predictor.close()
    versions = sorted({v for r in rows for v in r["lut_version_ids"]} | ({sealed.id} if sealed else set()))
    summary = {
        "baseline": baseline,
        "controllers": summary_controllers,
        "lut_version_ids": versions,
        "wall_s": time.monotonic() - t_start,
        "episodes": config.episodes,
    }
    write_json(out / "summary.json", summary)
    from host.report import build_report

    shown.say(f"report: {build_report(out)}")
    return summary


def _final_model(
    name: str,
    config: SearchConfig,
    rows: list[dict[str, Any]],
    teacher: torch.nn.Module,
    data: Any,
    loaders: Any,
    final_set: TensorDataset,
    evaluator: Evaluator,
    client: Any,
    final_dir: Path,
    baseline: dict[str, Any],
    shown: Progress,
) -> dict[str, Any]:
    """The controller's best policy, fine-tuned fully, exported, verified and benchmarked (with the
    FP32 baseline again, right after it, for the speedup)."""

    directory = final_dir / name
    directory.mkdir(exist_ok=True)
    if (directory / "result.json").exists():
        return json.loads((directory / "result.json").read_text())
    best = max((r for r in rows if r["controller"] == name), key=lambda r: r["reward"])
    policy = Policy.from_json(json.dumps(best["policy"]))
    write_json(directory / "policy.json", json.loads(policy.to_json()))
    shown.context = ""
    shown.say(f"[{name}] final model: episode {best['episode']}, fine-tuning {config.final_distill.epochs} epochs ...")
    example = torch.zeros((1, *data.input_shape))
    student, before = compressed(teacher, policy, example, config.round_to, loaders.train, config.calibration_batches)
    loader = distill_loader(final_set, config.batch_size, config.data.seed)
    distill(
        student,
        teacher,
        config.model,
        loader,
        replace(config.final_distill, seed=config.seed),
        shown.fit(f"[{name}] fine-tune"),
    )
    onnx_path = directory / "model.onnx"
    export_policy_model(student, policy, onnx_path, tuple(data.input_shape))
    prediction = evaluator.predictor.predict(onnx_path)
    acc_onnx, _ = device_accuracy_and_latency(client, onnx_path, data.x_test, data.y_test, 1)
    # Side by side with the FP32 model, several times: the baseline measured at the start of the
    # search may be minutes old, and this CPU drifts (see paired_latency).
    paired = paired_latency(client, onnx_path, final_dir / "baseline_fp32.onnx", config.benchmark_rounds)
    write_json(directory / "benchmark.json", paired.model)
    write_json(directory / "baseline_benchmark.json", paired.baseline)
    sizes = size_report(student, policy, before)
    measured = paired.model["latency"]
    base_measured = paired.baseline["latency"]
    val_acc = accuracy(student, loaders.val)
    result = {
        "policy": json.loads(policy.to_json()),
        "episode": best["episode"],
        "episodes": config.episodes,
        "val_accuracy": val_acc,
        "test_accuracy": accuracy(student, loaders.test),
        "test_accuracy_onnxruntime": acc_onnx,
        "params": sizes.params,
        "params_reduction": sizes.params_reduction,
        "fp32_size_bytes": sizes.fp32_bytes,
        "effective_size_bytes": sizes.effective_bytes,
        "compression": sizes.compression,
        "predicted_latency_ms": prediction.latency_ms,
        "measured_latency": measured,
        "baseline_measured_latency": base_measured,
        "speedup": paired.speedup,
        "benchmark_rounds": paired.rounds,
        "reward": reward(
            val_acc,
            prediction.latency_ms,
            sizes.effective_bytes,
            baseline["predicted_latency_ms"],
            baseline["fp32_size_bytes"],
            config.reward,
        ),
        "onnx": str(onnx_path.relative_to(final_dir.parent)),
    }
    write_json(directory / "result.json", result)
    return result
