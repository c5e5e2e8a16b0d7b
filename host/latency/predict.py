"""Latency of an ONNX model on a device, from the LUT: model -> kernels -> keys -> lookup.

Kernels come from `lut_store.keys.graph` (the agent splits models with the same function). Their
keys are in-model keys: what the kernel costs inside a whole model, as the agent measured it
(Benchmark with per_kernel; see device_agent/kernelprofile.py). A prediction is the sum of the
kernels' mean in-model latencies, each traceable to the LUT version it came from.

Keys missing from the pinned version are profiled on the device at once, one candidate model per
call, and written into this predictor's own open version of the device's fingerprint (whose
parent is the pinned version), under a lease a background thread renews; a nightly run or
another search holding versions of the same fingerprint never blocks it. `close()` seals it, and
sealing takes in every entry of the latest sealed version it lacks, so the newest sealed version
holds everything known. With no device a miss is an error.

A single measurement of a model whose weights outgrow the core's own caches can be tens of percent
slow on a CPU whose last-level cache other tenants share, for seconds to minutes. `remeasure()`
profiles a model again later (spread over time, between other work) and keeps the entries of the
fastest pass: the model's latency when nothing else contends for the device.

`register()` remembers a model (a search's final model, its FP32 baseline) in the store for the
device, so that the agent's nightly re-profile measures its kernels in context again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx
import structlog
from google.protobuf import json_format

from host.device import Device
from host.latency import LatencyError
from host.runs import Latency
from lut_store.build import LeaseKeeper, acquire, default_owner, in_model_entries
from lut_store.interface import LutStore
from lut_store.keys.graph import Kernel, UnsupportedModel, model_kernels
from lut_store.opkey import OpKey
from lut_store.precision import Precision
from lut_store.records import (
    Entry,
    ModelRegistration,
    NoSealedVersion,
    StoreError,
    UnknownDevice,
    Version,
)
from lut_store.store import resolve_version

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class KernelEstimate:
    """One kernel's share of a prediction. `source`: 'lut' (found), 'profiled' (measured on
    demand for this prediction) or 'elided' (the runtime removed it: 0 ms, measured). Every
    estimate names the LUT version it was read from or written to."""

    name: str
    kind: str
    precision: Precision
    key_hash: str
    latency_ms: float
    version_id: int
    source: str


@dataclass(frozen=True)
class Prediction:
    latency_ms: float
    kernels: tuple[KernelEstimate, ...]
    version_ids: tuple[int, ...]
    profiled_kernels: int
    fingerprint_hash: str
    batch_size: int
    model_sha256: str
    seconds: float = 0.0
    measured_ms: float | None = None  # the device's whole-model latency of record, when profiled for this call

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def layer_latency_ms(self, layer_nodes: Mapping[str, str]) -> dict[str, float]:
        """Each layer's kernel latency, found by the compute node export named for the layer
        (`ExportedModel.layer_nodes`): the node is its kernel's anchor."""
        by_anchor = {k.name: k.latency_ms for k in self.kernels}
        missing = sorted(layer for layer, node in layer_nodes.items() if node not in by_anchor)
        if missing:
            raise LatencyError(
                f"layers {missing[:5]} have no kernel of their own in the prediction: their nodes are not the "
                "anchor of any kernel (fused into a neighbour, or the graph was changed after export)"
            )
        return {layer: by_anchor[node] for layer, node in layer_nodes.items()}


@dataclass
class _Known:
    entry: Entry
    version_id: int


@dataclass
class LatencyPredictor:
    """Predicts latencies for one device (fingerprint) from one store.

    `client`: the device for on-demand profiling, or None (offline: misses are errors). `pinned`: a
    LUT version id; default the newest sealed version of the fingerprint. A pinned version of
    another fingerprint is refused unless `force`.
    """

    store: LutStore
    fingerprint_hash: str
    fingerprint: Mapping[str, Any]
    client: Device | None = None
    pinned: int | None = None
    force: bool = False
    batch_size: int = 1
    lease_s: float = 600.0
    owner: str = field(default_factory=default_owner)
    base: Version | None = field(init=False, default=None)
    base_trusted: bool = field(init=False, default=True)  # False: `distrust_base`
    open_version: Version | None = field(init=False, default=None)
    _cache: dict[str, _Known] = field(init=False, default_factory=dict)
    _pass_ms: dict[str, float] = field(init=False, default_factory=dict)  # model sha256 -> its stored pass's ms
    _keeper: LeaseKeeper | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        try:
            self.base = resolve_version(self.store, self.fingerprint_hash, self.fingerprint, self.pinned, self.force)
        except (NoSealedVersion, UnknownDevice):
            if self.pinned is not None:
                raise
            self.base = None  # a device seen for the first time: everything is profiled on demand

    @classmethod
    def for_device(cls, store: LutStore, device: Device, offline: bool = False, **kwargs: Any) -> LatencyPredictor:
        """A predictor for `device` (its fingerprint read over gRPC); `offline`: it profiles nothing."""
        info = device.info()
        fingerprint = json_format.MessageToDict(info.fingerprint, preserving_proto_field_name=True)
        store.ensure_device(info.fingerprint_hash, fingerprint)
        return cls(store, info.fingerprint_hash, fingerprint, None if offline else device, **kwargs)

    def kernels(self, model: onnx.ModelProto) -> tuple[Kernel, ...]:
        try:
            return model_kernels(model, self.batch_size).kernels
        except UnsupportedModel as exc:
            raise LatencyError(str(exc)) from None

    def predict(self, model: onnx.ModelProto | bytes | Path) -> Prediction:
        """Predicted latency of one model at `batch_size`, with its per-kernel breakdown."""
        t0 = time.perf_counter()
        data = (
            model.SerializeToString()
            if isinstance(model, onnx.ModelProto)
            else (Path(model).read_bytes() if isinstance(model, (str, Path)) else bytes(model))
        )
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(data)
        kernels = self.kernels(proto)
        self._lookup({k.key.hash for k in kernels} - set(self._cache))
        missing = list({k.key.hash: k for k in kernels if k.key.hash not in self._cache}.values())
        profiled: set[str] = set()
        measured_ms = None
        if missing:
            profiled, measured_ms = self._profile(data, kernels, missing)
        estimates = [self._estimate(k, profiled) for k in kernels]
        versions = tuple(sorted({e.version_id for e in estimates}))
        return Prediction(
            sum(e.latency_ms for e in estimates),
            tuple(estimates),
            versions,
            len(profiled),
            self.fingerprint_hash,
            self.batch_size,
            hashlib.sha256(data).hexdigest(),
            time.perf_counter() - t0,
            measured_ms,
        )

    def _estimate(self, kernel: Kernel, profiled: set[str]) -> KernelEstimate:
        known = self._cache[kernel.key.hash]
        status = known.entry.status
        if status not in ("ok", "elided"):
            raise LatencyError(
                f"kernel {kernel.name} ({kernel.key.describe()}) cannot run on this device: "
                f"{known.entry.reason} (LUT version {known.version_id})"
            )
        latency_ms = float(known.entry.mean_ms or known.entry.median_ms) if status == "ok" else 0.0
        source = "elided" if status == "elided" else ("profiled" if kernel.key.hash in profiled else "lut")
        key = kernel.key
        return KernelEstimate(kernel.name, key.kind, key.precision, key.hash, latency_ms, known.version_id, source)

    def distrust_base(self) -> None:
        """Predict only from kernels profiled by this predictor: the base version was measured
        while the device ran otherwise (a driver, firmware or load since). It stays the parent, and
        sealing carries its entries that were not measured again forward."""
        self.base_trusted = False
        mine = self.open_version.id if self.open_version is not None else None
        self._cache = {h: known for h, known in self._cache.items() if known.version_id == mine}

    def _lookup(self, hashes: set[str]) -> None:
        for version in (self.open_version, self.base if self.base_trusted else None):
            if version is None or not hashes:
                continue
            found = self.store.lookup(version.id, hashes).entries
            for h, entry in found.items():
                self._cache[h] = _Known(entry, version.id)
            hashes = hashes - set(found)

    def remeasure(self, model: bytes | Path) -> float:
        """Profile `model` in context once more; where this pass measured the whole model faster than
        the pass its entries came from, replace the entries this predictor stored from that model with
        this pass's. Returns the model's latency of record in this pass (ms).

        Entries of other models and of the base version stay as they are: a pass replaces only
        whole passes of the same model, so entries never mix passes."""
        data = Path(model).read_bytes() if isinstance(model, (str, Path)) else bytes(model)
        kernels = self.kernels(onnx.load_from_string(data))
        resp = self._benchmark_kernels(data, kernels)
        model_ms = Latency.of(resp.latency).record_ms
        sha = resp.model.sha256
        if self.open_version is None or model_ms >= self._pass_ms.get(sha, float("inf")):
            return model_ms
        profile = in_model_entries(resp)
        mine = [
            profile.entries[h]
            for h, known in self._cache.items()
            if h in profile.entries
            and known.version_id == self.open_version.id
            and known.entry.settings.get("model_sha256") == sha
        ]
        if mine:
            self.store.add_entries(self.open_version.id, mine, owner=self.owner)
            for e in mine:
                self._cache[e.key_hash] = _Known(e, self.open_version.id)
            self._pass_ms[sha] = model_ms
            log.info("latency.remeasured", kernels=len(mine), model_ms=model_ms)
        return model_ms

    def _benchmark_kernels(self, data: bytes, kernels: tuple[Kernel, ...]) -> Any:
        """A per-kernel benchmark of the model on the device, checked against this host's kernels."""
        if self.client is None:
            raise LatencyError("profiling on demand is off (offline): nothing can be measured")
        from host.agent_client import AgentError

        try:
            resp = self.client.benchmark(data, batch_size=self.batch_size, per_kernel=True)
        except AgentError as exc:
            raise LatencyError(
                f"profiling the model's kernels on the device failed; nothing was stored: {exc}"
            ) from None
        if resp.fingerprint_hash != self.fingerprint_hash:
            raise LatencyError(
                f"the device's fingerprint is now {resp.fingerprint_hash[:16]}, not "
                f"{self.fingerprint_hash[:16]}: its runtime changed; start a new prediction session"
            )
        ours = {k.key.hash for k in kernels}
        theirs = {OpKey.from_proto(item.key).hash for item in resp.kernel_profile.kernels}
        if theirs != ours:
            raise LatencyError(
                f"the agent split the model into {len(theirs)} distinct kernels and this host into "
                f"{len(ours)} with other keys: agent and host run different hadmc versions"
            )
        return resp

    def _profile(self, data: bytes, kernels: tuple[Kernel, ...], missing: list[Kernel]) -> tuple[set[str], float]:
        """Measure the model's kernels on the device; store the missing ones; all or nothing."""
        if self.client is None:
            names = ", ".join(f"{k.name} ({k.key.describe()})" for k in missing[:5])
            where = f"LUT version {self.base.id}" if self.base else "the store (no sealed version for this device)"
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise LatencyError(
                f"{len(missing)} kernel(s) are not in {where} and profiling on demand is off (offline): {names}{more}"
            )
        resp = self._benchmark_kernels(data, kernels)
        profile = in_model_entries(resp)
        entries = [profile.entries[k.key.hash] for k in missing]
        version = self._writable()
        self.store.add_entries(version.id, entries, owner=self.owner)
        for e in entries:
            self._cache[e.key_hash] = _Known(e, version.id)
        elided = sum(e.status == "elided" for e in entries)
        model_ms = Latency.of(resp.latency).record_ms
        self._pass_ms[resp.model.sha256] = model_ms
        log.info("latency.profiled", kernels=len(entries), elided=elided, model_ms=model_ms)
        return {e.key_hash for e in entries}, model_ms

    def _writable(self) -> Version:
        """This predictor's open version, acquired on first write; a background thread renews its
        lease while the predictor lives, however long it waits between predictions."""
        if self.open_version is None:
            build = acquire(
                self.store,
                self.fingerprint_hash,
                "search",
                self.owner,
                self.lease_s,
                settings={"method": "in-model", "batch_size": self.batch_size},
                note="kernels profiled on demand",
                parent_id=self.base.id if self.base else None,
            )
            self.open_version = build.version
            self._keeper = LeaseKeeper(self.store, build.version.id, self.owner, self.lease_s).start()
        return self.open_version

    def register(self, model: Path, name: str | None = None) -> ModelRegistration:
        """Remember `model` in the store for this device (by sha256, with its bytes and kernels;
        `name`: default its path), so that re-profiling keeps its kernels fresh. It is predicted
        first: kernels the LUT lacks are profiled now."""
        data = Path(model).read_bytes()
        prediction = self.predict(data)
        kernels = tuple(k.key_hash for k in prediction.kernels)
        done = self.store.register_model(
            self.fingerprint_hash, name or str(Path(model).resolve()), data, self.batch_size, kernels
        )
        log.info(
            "latency.registered", model=done.model.name, kernels=len(kernels), evicted=[m.name for m in done.evicted]
        )
        return done

    def close(self) -> Version | None:
        """Seal the open version (sealing takes in what the latest sealed version has and it
        lacks); return it. An empty one is abandoned."""
        if self.open_version is None:
            return None
        version, self.open_version = self.open_version, None
        keeper, self._keeper = self._keeper, None
        keeper.stop()
        try:
            if self.store.version(version.id).entry_count == 0:
                self.store.abandon(version.id)
                return None
            sealed = self.store.seal(version.id, self.owner)
        except StoreError as exc:
            log.warning("latency.seal_failed", version=version.id, error=str(exc))
            keeper.stop(release=True)
            raise
        log.info("latency.sealed", version=sealed.id, parent=sealed.parent_id, entries=sealed.entry_count)
        return sealed

    def release(self) -> None:
        """After a failure: stop renewing and release the lease of the open version, unsealed, so
        that the next predictor of this device and parent resumes it (nothing measured is lost)."""
        if self.open_version is None:
            return
        keeper, self._keeper, self.open_version = self._keeper, None, None
        keeper.stop(release=True)

    def __enter__(self) -> LatencyPredictor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.release()
