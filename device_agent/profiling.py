"""Measuring keys through the daemon's job queue: request settings and one key's result.
Used by the Profile RPC and by nightly re-profiling."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from device_agent.config import MeasurementDefaults
from device_agent.jobs import (
    CANCELLED,
    CRASHED,
    EXHAUSTED,
    FAILED,
    INTERFERENCE,
    INVALID,
    TIMEOUT,
    UNSUPPORTED,
    JobError,
    ProfileJob,
    Settings,
)
from device_agent.runner import MeasurementRunner
from lut_store.opkey import OpKey, OpKeyError
from protos.hadmc.v1 import agent_pb2, common_pb2

_KEY_CODES = {
    INVALID: agent_pb2.KeyError.CODE_INVALID,
    UNSUPPORTED: agent_pb2.KeyError.CODE_UNSUPPORTED,
    FAILED: agent_pb2.KeyError.CODE_FAILED,
    CRASHED: agent_pb2.KeyError.CODE_FAILED,
    EXHAUSTED: agent_pb2.KeyError.CODE_FAILED,
    TIMEOUT: agent_pb2.KeyError.CODE_TIMEOUT,
    INTERFERENCE: agent_pb2.KeyError.CODE_INTERFERENCE,
}
# Bounds a request may ask for, whatever the agent's defaults.
_SETTING_BOUNDS = {
    "warmup_runs": (0, 100_000),
    "min_runs": (5, 1_000_000),
    "max_runs": (5, 10_000_000),
    "max_time_s": (0.001, 600.0),
    "target_rel_ci": (1e-4, 0.5),
    "max_attempts": (1, 20),
    "interference_max_cores": (0.01, 1024.0),
    "min_window_s": (0.0, 600.0),
}


class BadRequest(ValueError):
    """A request the agent refuses as a whole (INVALID_ARGUMENT)."""


def resolve_settings(requested: common_pb2.MeasurementSettings, defaults: MeasurementDefaults) -> Settings:
    """Fill unset fields from the agent's defaults and check every value's range."""
    values = {}
    for f in dataclasses.fields(Settings):
        value = getattr(requested, f.name) if requested.HasField(f.name) else getattr(defaults, f.name)
        lo, hi = _SETTING_BOUNDS[f.name]
        if not lo <= value <= hi:
            raise BadRequest(f"settings.{f.name} = {value:g} is outside {lo:g}..{hi:g}")
        values[f.name] = value
    if values["max_runs"] < values["min_runs"]:
        raise BadRequest(f"settings.max_runs = {values['max_runs']} is below min_runs = {values['min_runs']}")
    if values["min_window_s"] > values["max_time_s"]:
        raise BadRequest(
            f"settings.min_window_s = {values['min_window_s']:g} is over max_time_s = {values['max_time_s']:g}"
        )
    return Settings(**values)


def profile_one(
    runner: MeasurementRunner,
    index: int,
    msg: common_pb2.OpKey,
    settings: Settings,
    key_timeout_s: float,
    is_active: Callable[[], bool],
) -> agent_pb2.ProfileResult:
    """Measure one key (inside a runner slot); a bad key becomes a result with a KeyError.

    Raises JobError(CANCELLED) when the caller went away.
    """
    result = agent_pb2.ProfileResult(index=index)
    try:
        key = OpKey.from_proto(msg)
    except OpKeyError as exc:
        result.error.code = agent_pb2.KeyError.CODE_INVALID
        result.error.message = f"key {index}: {exc}"
        return result
    result.key_hash = key.hash
    if key.context != "isolated":
        result.error.code = agent_pb2.KeyError.CODE_INVALID
        result.error.message = (
            f"key {index} ({key.describe()}): {key.context} keys are measured inside whole "
            "models (Benchmark with per_kernel), not alone"
        )
        return result
    try:
        stats, env = runner.call(ProfileJob(key.canonical_json(), settings), key_timeout_s, is_active)
    except JobError as exc:
        if exc.code == CANCELLED:
            raise
        result.error.code = _KEY_CODES.get(exc.code, agent_pb2.KeyError.CODE_FAILED)
        result.error.message = f"key {index} ({key.describe()}): {exc}"
        return result
    result.stats.ParseFromString(stats)
    result.environment.ParseFromString(env)
    return result
