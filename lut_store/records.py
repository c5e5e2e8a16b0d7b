"""Records that cross the store's boundary, and the store's errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VERSION_STATUSES = ("open", "sealed", "abandoned")
VERSION_SOURCES = ("manual", "nightly", "search", "import")
# 'elided': the runtime ran no node of this in-model kernel (fused away, folded): 0 ms, measured.
ENTRY_STATUSES = ("ok", "unsupported", "failed", "elided")


class StoreError(RuntimeError):
    """A store operation that cannot be done; the message says why and what to do."""


class UnknownDevice(StoreError):
    """No device with that fingerprint hash is in the store."""


class UnknownVersion(StoreError):
    """No version with that id."""


class NoSealedVersion(StoreError):
    """The device has no sealed version yet."""


class VersionNotOpen(StoreError):
    """A write to a sealed or abandoned version (sealed versions are immutable)."""


class LeaseLost(StoreError):
    """This holder's lease on its open version expired and another holder took the version."""


class UnknownModel(StoreError):
    """No registered model with that sha256 in the store."""


class CorruptExport(StoreError):
    """An export file that fails its checksum, is truncated or is not an export."""


class FingerprintMismatch(StoreError):
    """A version made under another fingerprint than the device's current one."""


class StoreUnavailable(StoreError):
    """The store's database could not be reached within the reconnect budget; nothing was written."""


class CommitOutcomeUnknown(StoreError):
    """The connection was lost while a write was committing: it may or may not have been stored."""


@dataclass(frozen=True)
class Device:
    fingerprint_hash: str
    fingerprint: dict[str, Any]
    first_seen_unix_s: float


@dataclass(frozen=True)
class Version:
    id: int
    uid: str
    fingerprint_hash: str
    parent_id: int | None
    status: str
    source: str
    created_at_unix_s: float
    sealed_at_unix_s: float | None
    settings: dict[str, Any]
    note: str
    lease_owner: str | None = None
    lease_expires_unix_s: float | None = None
    entry_count: int = 0


@dataclass(frozen=True)
class Entry:
    """One kernel's latency in one version. Status 'ok' carries stats; others carry a reason
    ('elided': no runtime node, so 0 ms inside its model, as measured)."""

    key_hash: str
    key_json: str
    status: str
    measured_at_unix_s: float
    median_ms: float | None = None
    mean_ms: float | None = None
    p90_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    n: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    # Uid of the version this entry was measured in, when it was carried forward from there
    # into a newer version (its age is measured_at_unix_s); None when measured in its own version.
    measured_in_uid: str | None = None

    def __post_init__(self) -> None:
        if self.status not in ENTRY_STATUSES:
            raise StoreError(f"entry status {self.status!r} is not one of {ENTRY_STATUSES}")
        if self.status == "ok":
            if self.median_ms is None or not self.median_ms > 0:
                raise StoreError(f"entry {self.key_hash[:12]}: an ok entry needs a median > 0 ms, got {self.median_ms}")
            if self.n is None or self.n < 2:
                raise StoreError(f"entry {self.key_hash[:12]}: an ok entry needs n >= 2 runs, got {self.n}")
        elif not self.reason:
            raise StoreError(f"entry {self.key_hash[:12]}: a {self.status} entry needs a reason")


@dataclass(frozen=True)
class Lookup:
    """Entries found for some keys in one version; keys not found are absent."""

    version_id: int
    entries: dict[str, Entry]


@dataclass(frozen=True)
class Build:
    """An open version held by one builder (see LutStore.acquire_build)."""

    version: Version
    owner: str
    resumed: bool


@dataclass(frozen=True)
class RegisteredModel:
    """A model the store keeps fresh for one device: re-profiled in context (Benchmark with
    per_kernel) by every nightly run. `kernels` are its kernels' in-model key hashes in graph
    order, repeats included: its predicted latency from a version is the sum of their mean
    latencies there (0 ms for an elided one)."""

    fingerprint_hash: str
    model_sha256: str
    batch_size: int
    name: str
    kernels: tuple[str, ...]
    size_bytes: int
    registered_at_unix_s: float
    last_used_unix_s: float


@dataclass(frozen=True)
class ModelRegistration:
    """What registering a model did: the model as stored, and the least recently used models
    of its device evicted to keep within the store's model limit."""

    model: RegisteredModel
    evicted: tuple[RegisteredModel, ...] = ()
