"""The runtimes an agent measures with, behind one interface: onnxruntime (ort.py) and OpenVINO
(ov.py). Everything else in the worker (measurement discipline, input checks, per-kernel
attribution) is the same for both, so their latencies mean the same thing.

Runs inside the measurement worker process only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from device_agent.jobs import RuntimeFacts
from lut_store.keys.graph import RuntimeNode


@dataclass(frozen=True)
class NodeTimes:
    """One profiled model: the nodes the runtime executed, microseconds per (run, node), and each
    profiled run's wall time, milliseconds."""

    nodes: list[RuntimeNode]
    table_us: np.ndarray
    run_ms: np.ndarray


class Loaded(Protocol):
    """A model ready to run on the device."""

    def runner(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
        """A closure running the model once on `feeds`, bound once (device-resident where it can)."""

    def output_names(self) -> list[str]: ...

    def run(self, names: list[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The named outputs for `feeds` (any batch size)."""


class Backend(Protocol):
    facts: RuntimeFacts
    label: str  # the BenchmarkResponse's execution_provider
    nvml_handle: Any

    def load(self, model: bytes | str, batch: int | None = None, for_profile: bool = False) -> Loaded:
        """Load model bytes or a path (its batch axis fixed to `batch` where the runtime prefers
        static shapes); failures are JobErrors with the right code. `for_profile`: the model will
        be profiled after it is measured (a runtime whose profiler costs nothing measurable
        profiles this very model, so the profile and the measurement see the same compiled code)."""

    def executed_as(self, model: bytes, feeds: Mapping[str, np.ndarray]) -> str:
        """Run `model` once; say what the runtime made of it (for the precision probe)."""

    def profile_nodes(
        self,
        model: bytes | str,
        loaded: Loaded | None,
        feeds: Mapping[str, np.ndarray],
        batch: int | None,
        warmup_runs: int,
        runs: int,
        cancelled: Callable[[], bool],
    ) -> NodeTimes:
        """Per-node times of `model` over `runs` runs after `warmup_runs`, from the runtime's own
        profiler (on `loaded`, when it was loaded for profiling and the runtime can); an
        InterruptedError when cancelled between runs."""


def unique_by_name(nodes: list[RuntimeNode]) -> list[RuntimeNode]:
    """The first node of each name: profilers report time by node name, so nodes sharing one (an
    unnamed node, a name the optimizer reused) are one column of times."""
    seen: set[str] = set()
    return [n for n in nodes if not (n.name in seen or seen.add(n.name))]
