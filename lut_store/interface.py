"""The interface every LUT store backend implements (lut_store/sqlstore.py, grpc_store.py).

A version belongs to one device fingerprint and is open (being filled by one holder under its
lease), sealed (immutable forever) or abandoned. A fingerprint may have several open versions at
once, one per holder (a nightly run, each search's predictor, a `lut build`), so no holder waits
for another. "Latest" is the newest sealed version, and it never hides anything: sealing a
version takes into it every entry of the then-latest sealed version of its fingerprint that it
lacks (marked with the version it was measured in), so the latest holds every key measured in
any sealed version of the fingerprint. Every lookup returns the version id with its values.

The store also remembers the models a device's searches and compressions produced (their ONNX
bytes by sha256), the most recently used few per device, so that re-profiling can measure
their kernels in context again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from lut_store.records import (
    Build,
    Device,
    Entry,
    Lookup,
    ModelRegistration,
    NoSealedVersion,
    RegisteredModel,
    UnknownDevice,
    Version,
)
from lut_store.secrets import redact_url


class LutStore(ABC):
    """Operations every backend provides; all writes are transactional."""

    url: str

    @property
    def shown_url(self) -> str:
        """The URL as messages, logs and files show it: any password or token masked."""
        return redact_url(self.url)

    @abstractmethod
    def ensure_device(self, fingerprint_hash: str, fingerprint: Mapping[str, Any]) -> Device:
        """Record a device (idempotent); return it."""

    @abstractmethod
    def devices(self) -> list[Device]: ...

    @abstractmethod
    def acquire_build(
        self,
        fingerprint_hash: str,
        source: str,
        owner: str,
        lease_s: float,
        settings: Mapping[str, Any] | None = None,
        note: str = "",
        parent_id: int | None = None,
        take_over_from: str | None = None,
    ) -> Build:
        """An open version of the fingerprint held by `owner` for `lease_s` (the database's clock).

        The parent is `parent_id`, else the latest sealed version. Among the open versions of the
        same `source` and parent, this resumes one `owner` holds, else one `take_over_from`
        holds (a holder known to be dead), else one whose lease expired; otherwise it opens a
        new version. Other holders' live versions are never touched, so this never waits."""

    @abstractmethod
    def renew_lease(self, version_id: int, owner: str, lease_s: float) -> None:
        """Extend the lease to `lease_s` from now (0 releases it: any holder of the same source
        and parent may resume the version at once); LeaseLost when another holder took it."""

    @abstractmethod
    def add_entries(self, version_id: int, entries: Sequence[Entry], owner: str | None = None) -> int:
        """Write entries into an open version (replacing earlier ones of the same keys); with
        `owner`, only while that owner holds the lease. VersionNotOpen for sealed versions."""

    @abstractmethod
    def seal(self, version_id: int, owner: str | None = None) -> Version:
        """Seal an open version (with `owner`, only while that owner holds it): in one
        transaction, take in every entry of the latest sealed version of its fingerprint that
        it lacks (its own entries stay as measured), then make it immutable and the latest."""

    @abstractmethod
    def abandon(self, version_id: int) -> Version: ...

    @abstractmethod
    def version(self, version_id: int) -> Version: ...

    @abstractmethod
    def versions(self, fingerprint_hash: str | None = None) -> list[Version]:
        """Versions, newest first."""

    @abstractmethod
    def entries(self, version_id: int) -> Iterator[Entry]:
        """All entries of a version, by key hash."""

    @abstractmethod
    def lookup(self, version_id: int, key_hashes: Iterable[str]) -> Lookup:
        """Entries of the given keys in one version (missing keys are absent), with its id."""

    @abstractmethod
    def import_version(
        self, device: Device, version: Version, entries: Sequence[Entry], parent_uid: str | None
    ) -> Version:
        """Write a whole version from elsewhere (same uid), in one transaction."""

    @abstractmethod
    def register_model(
        self,
        fingerprint_hash: str,
        name: str,
        onnx: bytes,
        batch_size: int,
        kernels: Sequence[str],
        used_at_unix_s: float | None = None,
    ) -> ModelRegistration:
        """Remember a model for a device (its bytes by sha256), or update a remembered one's name,
        kernels and last use (`used_at_unix_s`, default now); then evict the device's least
        recently used models beyond `model_limit()`."""

    @abstractmethod
    def registered_models(self, fingerprint_hash: str) -> list[RegisteredModel]:
        """A device's registered models, most recently used first."""

    @abstractmethod
    def model_bytes(self, model_sha256: str) -> bytes:
        """The ONNX bytes of a registered model; UnknownModel when none has that sha256."""

    @abstractmethod
    def model_limit(self) -> int:
        """How many models the store keeps per device."""

    @abstractmethod
    def set_model_limit(self, limit: int) -> list[RegisteredModel]:
        """Keep `limit` models per device from now on; returns the models evicted to get there."""

    @abstractmethod
    def close(self) -> None: ...

    def latest(self, fingerprint_hash: str) -> Version:
        """The newest sealed version of a device; open or abandoned versions never count."""
        known = {d.fingerprint_hash for d in self.devices()}
        if fingerprint_hash not in known:
            listing = ", ".join(sorted(h[:16] for h in known)) or "none"
            raise UnknownDevice(
                f"no device with fingerprint {fingerprint_hash[:16]} in {self.shown_url}; known: {listing}"
            )
        for v in self.versions(fingerprint_hash):
            if v.status == "sealed":
                return v
        raise NoSealedVersion(
            f"device {fingerprint_hash[:16]} has no sealed LUT version in {self.shown_url}; run `hadmc lut build` first"
        )

    def device(self, fingerprint_hash: str) -> Device:
        for d in self.devices():
            if d.fingerprint_hash == fingerprint_hash:
                return d
        listing = ", ".join(sorted(d.fingerprint_hash[:16] for d in self.devices())) or "none"
        raise UnknownDevice(f"no device with fingerprint {fingerprint_hash[:16]} in {self.shown_url}; known: {listing}")

    def __enter__(self) -> LutStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
