"""The interface every LUT store backend implements (lut_store/sqlstore.py, grpc_store.py).

A version belongs to one device fingerprint and is open (being filled by one builder), sealed
(immutable forever) or abandoned. "Latest" is the newest sealed version. Every lookup returns
the version id with its values.
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
    NoSealedVersion,
    UnknownDevice,
    Version,
)


class LutStore(ABC):
    """Operations every backend provides; all writes are transactional."""

    url: str

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
        """Hold the fingerprint's open version for `owner`: resume one whose lease expired, that
        `owner` already holds, or that `take_over_from` holds (a builder known to be dead);
        else open a new one whose parent is `parent_id` or the latest sealed version.
        Raises BuildInProgress when another builder holds it."""

    @abstractmethod
    def renew_lease(self, version_id: int, owner: str, lease_s: float) -> None:
        """Extend the lease; LeaseLost when another builder took the version."""

    @abstractmethod
    def add_entries(self, version_id: int, entries: Sequence[Entry], owner: str | None = None) -> int:
        """Write entries into an open version (replacing earlier ones of the same keys); with
        `owner`, only while that owner holds the lease. VersionNotOpen for sealed versions."""

    @abstractmethod
    def seal(self, version_id: int) -> Version: ...

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
    def close(self) -> None: ...

    def latest(self, fingerprint_hash: str) -> Version:
        """The newest sealed version of a device; open or abandoned versions never count."""
        known = {d.fingerprint_hash for d in self.devices()}
        if fingerprint_hash not in known:
            listing = ", ".join(sorted(h[:16] for h in known)) or "none"
            raise UnknownDevice(f"no device with fingerprint {fingerprint_hash[:16]} in {self.url}; known: {listing}")
        for v in self.versions(fingerprint_hash):
            if v.status == "sealed":
                return v
        raise NoSealedVersion(
            f"device {fingerprint_hash[:16]} has no sealed LUT version in {self.url}; run `hadmc lut build` first"
        )

    def device(self, fingerprint_hash: str) -> Device:
        for d in self.devices():
            if d.fingerprint_hash == fingerprint_hash:
                return d
        listing = ", ".join(sorted(d.fingerprint_hash[:16] for d in self.devices())) or "none"
        raise UnknownDevice(f"no device with fingerprint {fingerprint_hash[:16]} in {self.url}; known: {listing}")

    def __enter__(self) -> LutStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
