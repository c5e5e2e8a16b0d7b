"""`hadmc experiment` settings: a preset, then the same TOML `hadmc search` reads (its keys
override the preset's), with an optional `[experiment]` table for what the studies vary.

Each study chooses its own controllers, so a config that names `controllers` is refused.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from host.data import DataConfig
from host.experiment import STUDIES
from host.runs import SCHEMA, check_schema
from host.search.run import SearchConfig
from lut_store.tomlfile import ConfigError, from_mapping, read_toml


@dataclass(frozen=True)
class Case:
    """One model on one data set (the cross-dataset study)."""

    model: str = "mlp"
    data: DataConfig = DataConfig()


def _paper_cases() -> list[Case]:
    return [
        Case("resnet18", DataConfig("synthetic-neu-det")),
        Case("mlp", DataConfig("digits")),
        Case("mlp", DataConfig("breast-cancer")),
    ]


@dataclass(frozen=True)
class ExperimentConfig:
    """The `[experiment]` table."""

    seeds: int = 1  # each study runs with search seeds seed, seed + 1, ...
    # sota bounds every method by one latency budget: the search config's latency_budget_ms, else
    # this fraction of the FP32 model's latency as the device's LUT predicts it (well above 1: no
    # bound; at 1 a precision slower than FP32 on the device, such as int4 on a CPU, is bounded).
    sota_latency_fraction: float = 0.5
    cases: list[Case] = field(default_factory=_paper_cases)  # cross-dataset
    devices: list[str] = field(default_factory=list)  # cross-device: names in the devices file, or HOST:PORT
    device_threads: list[int] = field(default_factory=lambda: [1, 2])  # cross-device without devices: embedded agents
    # cross-device without devices: embedded agents, one per runtime ("onnxruntime", "openvino"), at the
    # search's [device] threads; takes the place of device_threads.
    device_runtimes: list[str] = field(default_factory=list)

    def check(self) -> None:
        if self.seeds < 1:
            raise ConfigError(f"seeds = {self.seeds}: an experiment needs at least one seed")
        if self.sota_latency_fraction < 0:
            raise ConfigError(
                f"sota_latency_fraction = {self.sota_latency_fraction}: give a positive fraction of "
                "the FP32 model's latency, or 0 to rely on latency_budget_ms"
            )
        if not self.cases:
            raise ConfigError("cases = []: cross-dataset needs at least one (model, data) case")
        if any(t < 1 for t in self.device_threads) or len(set(self.device_threads)) != len(self.device_threads):
            raise ConfigError(f"device_threads = {self.device_threads}: give distinct thread counts of at least 1")


@dataclass(frozen=True)
class Experiment:
    """A resolved experiment: the study, the base search config, the experiment settings."""

    study: str
    search: SearchConfig
    settings: ExperimentConfig

    def check(self) -> None:
        """Every problem that can be found before any work, each with what to do."""
        if self.study not in STUDIES:
            raise ConfigError(f"unknown study {self.study!r}; choices: {', '.join(STUDIES)}")
        self.search.check()
        self.settings.check()
        if self.study == "sota":
            if self.search.search.max_params_fraction:
                raise ConfigError(
                    "study sota compares amc, haq, amc-then-haq and ppo under one latency budget "
                    "(haq bounds latency only): remove max_params_fraction and set latency_budget_ms, "
                    "or [experiment] sota_latency_fraction"
                )
            if not (self.search.search.latency_budget_ms or self.settings.sota_latency_fraction):
                raise ConfigError(
                    "study sota runs haq, which needs a latency budget: set latency_budget_ms, or "
                    "[experiment] sota_latency_fraction (e.g. 0.5 of the FP32 model's LUT latency)"
                )
        embedded = self.settings.device_runtimes or self.settings.device_threads
        if self.study == "cross-device" and len(self.settings.devices or embedded) < 2:
            raise ConfigError(
                "study cross-device needs at least two devices: give --device twice (or [experiment] "
                "devices), or [experiment] device_runtimes = ['onnxruntime', 'openvino'] or device_threads = [1, 2] "
                "for embedded agents"
            )
        if self.settings.devices and self.settings.device_runtimes:
            raise ConfigError(
                "[experiment] devices and device_runtimes both given: a named device runs what its agent was started "
                "with; give one of them"
            )

    def to_doc(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "study": self.study, "search": asdict(self.search), "settings": asdict(self.settings)}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], where: str) -> Experiment:
        check_schema(doc, where)
        return cls(
            doc["study"], from_mapping(SearchConfig, doc["search"]), from_mapping(ExperimentConfig, doc["settings"])
        )


# Presets (named in PRESET_NAMES for the CLI) are config documents; a config file and the flags
# override them key by key.
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's budget (ResNet18, synthetic NEU-DET 64x64, 15 episodes of 1,152 images, 20-epoch
    # finals), as examples/search-paper.toml runs it; the demo runs a smaller one. Every precision
    # the device runs; PPO practises on the reward surrogate.
    "paper": {
        "model": "resnet18",
        "data": {"name": "synthetic-neu-det"},
        "search": {"episodes": 15, "episode_samples": 1152},
        "ppo": {"actor_lr": 1e-3, "critic_lr": 3e-3, "surrogate_episodes": 32},
    },
    # Seconds per search: an MLP, 2 episodes, 1-epoch fine-tunes (CI runs every study at this budget).
    # The MLP runs in microseconds, where no precision is reliably faster than FP32: sota's budget
    # then bounds nothing, so that HAQ always has a feasible policy.
    "tiny": {
        "model": "mlp",
        "data": {"name": "breast-cancer"},
        "search": {"episodes": 2, "episode_samples": 64},
        "baseline": {"epochs": 2},
        "episode_distill": {"epochs": 1},
        "final_distill": {"epochs": 1},
        "hirelc": {"lla_timesteps": 10, "hla_timesteps": 20, "hla_burst": 10, "surrogate_min": 1},
        "experiment": {
            "sota_latency_fraction": 1.5,
            "cases": [
                {"model": "mlp", "data": {"name": name}} for name in ("synthetic-neu-det", "digits", "breast-cancer")
            ],
        },
    },
}


def _merged(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base`, table by table."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        out[key] = _merged(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def load_experiment(
    study: str,
    preset: str = "paper",
    path: Path | None = None,
    seeds: int | None = None,
    devices: Sequence[str] = (),
    store: str | None = None,
    tables: Mapping[str, Mapping[str, Any]] | None = None,
) -> Experiment:
    """The experiment `study` from a preset, a config file and the flags (`devices`: --device;
    `tables`: more flags as table overrides, None values keeping the config's), checked."""
    if study not in STUDIES:
        raise ConfigError(f"unknown study {study!r}; choices: {', '.join(STUDIES)}")
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choices: {', '.join(PRESETS)}")
    doc = read_toml(path, "config", ConfigError) if path is not None else {}
    if "controllers" in doc.get("search", {}):
        raise ConfigError(
            "[search] controllers: each study runs its own controllers (sota: amc, haq, ppo; controllers: "
            "ppo, hirelc, dqn, random; hirelc-ablation: hirelc; the others: ppo); remove the key"
        )
    doc = _merged(PRESETS[preset], doc)
    settings = doc.pop("experiment", {})
    if seeds is not None:
        settings["seeds"] = seeds
    for table, values in (tables or {}).items():
        doc[table] = {**doc.get(table, {}), **{k: v for k, v in values.items() if v is not None}}
    if study == "cross-device" and "name" in doc.get("device", {}):
        raise ConfigError(
            f"[device] name = {doc['device']['name']!r}: cross-device runs on several devices; list them "
            "in [experiment] devices or give --device once per device"
        )
    if study == "cross-device" and devices:
        settings["devices"] = list(devices)
    elif len(devices) > 1:
        raise ConfigError(f"--device given {len(devices)} times: only cross-device runs on several devices")
    elif devices:
        doc["device"] = {**doc.get("device", {}), "name": devices[0]}
    if store is not None:
        doc["store"] = store
    experiment = Experiment(
        study, from_mapping(SearchConfig, doc), from_mapping(ExperimentConfig, settings, "experiment")
    )
    experiment.check()
    return experiment
