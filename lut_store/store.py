"""Opening the versioned latency look-up table store by URL, one interface
(lut_store/interface.py) over three backends, and choosing the version a search uses.

- `sqlite:///path` (the default, under $HADMC_HOME or the per-user data directory),
- `postgresql://...` for a fleet,
- `grpc://host:port` for a store served by `hadmc lut serve` elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from lut_store.interface import LutStore
from lut_store.records import FingerprintMismatch, StoreError, Version

log = structlog.get_logger(__name__)


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
