"""The versioned latency look-up table store: one interface, three backends.

- `sqlite:///path` (the default, under $HADMC_HOME or the per-user data directory),
- `postgresql://...` for a fleet,
- `grpc://host:port` for a store served by `hadmc lut serve` elsewhere.

A version belongs to one device fingerprint and is open (being filled by one builder), sealed
(immutable forever) or abandoned. "Latest" is the newest sealed version. Every lookup returns
the version id with its values.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from lut_store.records import (
    Build,
    Device,
    Entry,
    FingerprintMismatch,
    Lookup,
    NoSealedVersion,
    StoreError,
    UnknownDevice,
    Version,
)

log = structlog.get_logger(__name__)


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


def resolve_version(
    store: LutStore,
    fingerprint_hash: str,
    fingerprint: Mapping[str, Any],
    pinned: int | None = None,
    force: bool = False,
) -> Version:
    """The version a search uses: `pinned`, else the latest sealed one of this fingerprint.

    A pinned version made under another fingerprint is refused with the fields that differ,
    unless `force`, which logs a loud warning instead.
    """
    if pinned is None:
        return store.latest(fingerprint_hash)
    version = store.version(pinned)
    if version.fingerprint_hash == fingerprint_hash:
        return version
    from lut_store.fingerprint import differences

    changed = differences(store.device(version.fingerprint_hash).fingerprint, fingerprint)
    what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()) or "fields outside this hadmc's list"
    message = (
        f"LUT version {pinned} was measured under fingerprint {version.fingerprint_hash[:16]}, the device "
        f"is now {fingerprint_hash[:16]} ({what}); its latencies may be stale"
    )
    if not force:
        raise FingerprintMismatch(message + ": re-profile it (hadmc agent reprofile --now), or force its use")
    log.warning("lut.fingerprint_mismatch", version=pinned, detail=message + "; used anyway (forced)")
    return version


def default_store_url() -> str:
    """sqlite:// under $HADMC_HOME, else the per-user data directory."""
    home = os.environ.get("HADMC_HOME")
    if home:
        base = Path(home)
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "hadmc"
    return f"sqlite:///{base / 'lut.sqlite'}"


def open_store(
    url: str | None = None, token: str | None = None, tls_ca: bytes | None = None, timeout_s: float = 10.0
) -> LutStore:
    """Open a store by URL (None: the default SQLite file)."""
    url = url or default_store_url()
    if url.startswith("sqlite:///"):
        from lut_store.sqlstore import SqliteStore

        return SqliteStore(Path(url[len("sqlite:///") :]), url)
    if url.startswith(("postgresql://", "postgres://")):
        from lut_store.sqlstore import PostgresStore

        return PostgresStore(url, timeout_s=timeout_s)
    if url.startswith("grpc://"):
        from lut_store.grpc_store import GrpcStore

        return GrpcStore(url[len("grpc://") :], token=token, tls_ca=tls_ca, timeout_s=timeout_s)
    raise StoreError(f"store URL {url!r}: expected sqlite:///PATH, postgresql://... or grpc://HOST:PORT")
