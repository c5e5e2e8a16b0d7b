"""SQL backends of the store: SQLite (default) and PostgreSQL, one implementation.

The dialects differ only in connection set-up, placeholders, write locking, the clock leases
are kept on (PostgreSQL's own; SQLite's writers all run on the machine that holds the file) and
the schema's trigger and blob syntax. Sealed versions are immutable twice over: the store
refuses the write with a clear error, and database triggers refuse it for any other writer.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import structlog

from lut_store.interface import LutStore
from lut_store.records import (
    VERSION_SOURCES,
    Build,
    CommitOutcomeUnknown,
    Device,
    Entry,
    LeaseLost,
    Lookup,
    ModelRegistration,
    RegisteredModel,
    StoreError,
    StoreUnavailable,
    UnknownModel,
    UnknownVersion,
    Version,
    VersionNotOpen,
)
from lut_store.secrets import redact_url

log = structlog.get_logger(__name__)
T = TypeVar("T")

_LOOKUP_CHUNK = 500
DEFAULT_MODEL_LIMIT = 16
_MODEL_LIMIT_SETTING = "models_per_device"

_COMMON_TABLES = """
CREATE TABLE devices (
    fingerprint_hash TEXT PRIMARY KEY,
    fingerprint_json TEXT NOT NULL,
    first_seen_unix_s DOUBLE PRECISION NOT NULL
);
CREATE TABLE versions (
    id {id_type},
    uid TEXT NOT NULL UNIQUE,
    fingerprint_hash TEXT NOT NULL REFERENCES devices(fingerprint_hash),
    parent_id BIGINT REFERENCES versions(id),
    status TEXT NOT NULL CHECK (status IN ('open', 'sealed', 'abandoned')),
    source TEXT NOT NULL CHECK (source IN ('manual', 'nightly', 'search', 'import')),
    created_at_unix_s DOUBLE PRECISION NOT NULL,
    sealed_at_unix_s DOUBLE PRECISION,
    settings_json TEXT NOT NULL,
    note TEXT NOT NULL,
    lease_owner TEXT,
    lease_expires_unix_s DOUBLE PRECISION
);
CREATE UNIQUE INDEX one_open_version_per_device ON versions(fingerprint_hash) WHERE status = 'open';
CREATE TABLE entries (
    version_id BIGINT NOT NULL REFERENCES versions(id),
    key_hash TEXT NOT NULL,
    key_json TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'unsupported', 'failed')),
    median_ms DOUBLE PRECISION,
    mean_ms DOUBLE PRECISION,
    p90_ms DOUBLE PRECISION,
    std_ms DOUBLE PRECISION,
    min_ms DOUBLE PRECISION,
    n INTEGER,
    settings_json TEXT NOT NULL,
    environment_json TEXT NOT NULL,
    measured_at_unix_s DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (version_id, key_hash),
    CHECK (status <> 'ok' OR (median_ms > 0 AND n >= 2))
)
"""

_SQLITE_ENTRY_TRIGGERS = """
CREATE TRIGGER entries_insert_only_into_open BEFORE INSERT ON entries
WHEN (SELECT status FROM versions WHERE id = NEW.version_id) IS NOT 'open'
BEGIN SELECT RAISE(ABORT, 'lut version is not open: sealed versions are immutable'); END;
CREATE TRIGGER entries_update_only_in_open BEFORE UPDATE ON entries
WHEN (SELECT status FROM versions WHERE id = OLD.version_id) IS NOT 'open'
BEGIN SELECT RAISE(ABORT, 'lut version is not open: sealed versions are immutable'); END;
CREATE TRIGGER entries_delete_only_from_open BEFORE DELETE ON entries
WHEN (SELECT status FROM versions WHERE id = OLD.version_id) IS NOT 'open'
BEGIN SELECT RAISE(ABORT, 'lut version is not open: sealed versions are immutable'); END
"""

_SQLITE_TRIGGERS = (
    _SQLITE_ENTRY_TRIGGERS.strip()
    + """;
CREATE TRIGGER sealed_versions_are_immutable BEFORE UPDATE ON versions WHEN OLD.status = 'sealed'
BEGIN SELECT RAISE(ABORT, 'lut version is sealed: immutable'); END;
CREATE TRIGGER sealed_versions_are_kept BEFORE DELETE ON versions WHEN OLD.status = 'sealed'
BEGIN SELECT RAISE(ABORT, 'lut version is sealed: immutable'); END
"""
)

_POSTGRES_TRIGGERS = """
CREATE FUNCTION hadmc_entries_only_in_open() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE vid BIGINT; st TEXT;
BEGIN
    IF TG_OP = 'DELETE' THEN vid := OLD.version_id; ELSE vid := NEW.version_id; END IF;
    SELECT status INTO st FROM versions WHERE id = vid;
    IF st IS DISTINCT FROM 'open' OR (TG_OP = 'UPDATE' AND OLD.version_id <> NEW.version_id) THEN
        RAISE EXCEPTION 'lut version is not open: sealed versions are immutable';
    END IF;
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER entries_only_in_open BEFORE INSERT OR UPDATE OR DELETE ON entries
FOR EACH ROW EXECUTE FUNCTION hadmc_entries_only_in_open();
CREATE FUNCTION hadmc_sealed_versions_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'sealed' THEN RAISE EXCEPTION 'lut version is sealed: immutable'; END IF;
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER sealed_versions_are_immutable BEFORE UPDATE OR DELETE ON versions
FOR EACH ROW EXECUTE FUNCTION hadmc_sealed_versions_are_immutable()
"""

# Several open versions per fingerprint (one per holder); entries carried forward into a newer
# version name the version they were measured in; kernels the runtime elided inside a model are
# entries too (status 'elided'); the models each device's LUT is kept fresh for.
_CONCURRENT_VERSIONS_AND_MODELS = """
DROP INDEX one_open_version_per_device;
CREATE INDEX versions_by_device ON versions(fingerprint_hash, status);
{entries_v2};
CREATE TABLE model_blobs (
    model_sha256 TEXT PRIMARY KEY,
    onnx {blob_type} NOT NULL,
    size_bytes BIGINT NOT NULL
);
CREATE TABLE registered_models (
    fingerprint_hash TEXT NOT NULL REFERENCES devices(fingerprint_hash),
    model_sha256 TEXT NOT NULL REFERENCES model_blobs(model_sha256),
    batch_size INTEGER NOT NULL CHECK (batch_size >= 1),
    name TEXT NOT NULL,
    kernels_json TEXT NOT NULL,
    registered_at_unix_s DOUBLE PRECISION NOT NULL,
    last_used_unix_s DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (fingerprint_hash, model_sha256, batch_size)
);
CREATE TABLE store_settings (
    name TEXT PRIMARY KEY,
    value_json TEXT NOT NULL
)
"""

# SQLite cannot change a CHECK constraint: the entries table is rebuilt (its triggers with it).
_SQLITE_ENTRIES_V2 = """
CREATE TABLE entries_v2 (
    version_id BIGINT NOT NULL REFERENCES versions(id),
    key_hash TEXT NOT NULL,
    key_json TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'unsupported', 'failed', 'elided')),
    median_ms DOUBLE PRECISION,
    mean_ms DOUBLE PRECISION,
    p90_ms DOUBLE PRECISION,
    std_ms DOUBLE PRECISION,
    min_ms DOUBLE PRECISION,
    n INTEGER,
    settings_json TEXT NOT NULL,
    environment_json TEXT NOT NULL,
    measured_at_unix_s DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL,
    measured_in_uid TEXT,
    PRIMARY KEY (version_id, key_hash),
    CHECK (status <> 'ok' OR (median_ms > 0 AND n >= 2))
);
INSERT INTO entries_v2 SELECT *, NULL FROM entries;
DROP TABLE entries;
ALTER TABLE entries_v2 RENAME TO entries;
""" + _SQLITE_ENTRY_TRIGGERS.strip()

_POSTGRES_ENTRIES_V2 = """
ALTER TABLE entries DROP CONSTRAINT entries_status_check;
ALTER TABLE entries ADD CONSTRAINT entries_status_check CHECK (status IN ('ok', 'unsupported', 'failed', 'elided'));
ALTER TABLE entries ADD COLUMN measured_in_uid TEXT
"""

_VERSION_COLUMNS = (
    "id, uid, fingerprint_hash, parent_id, status, source, created_at_unix_s, sealed_at_unix_s, "
    "settings_json, note, lease_owner, lease_expires_unix_s"
)
_ENTRY_COLUMNS = (
    "key_hash, key_json, status, measured_at_unix_s, median_ms, mean_ms, p90_ms, std_ms, min_ms, n, "
    "settings_json, environment_json, reason, measured_in_uid"
)
_ENTRY_MARKS = ", ".join("?" * 15)
_MODEL_COLUMNS = (
    "fingerprint_hash, model_sha256, batch_size, name, kernels_json, registered_at_unix_s, last_used_unix_s"
)
# The entries of a version (third ?) that another (first ?) lacks, copied into it, marked with the
# version they were measured in: their own mark, else that version's uid (second ?).
_TAKE_IN = (
    "INSERT INTO entries (version_id, key_hash, key_json, status, measured_at_unix_s, median_ms, mean_ms, p90_ms, "
    "std_ms, min_ms, n, settings_json, environment_json, reason, measured_in_uid) "
    "SELECT ?, e.key_hash, e.key_json, e.status, e.measured_at_unix_s, e.median_ms, e.mean_ms, e.p90_ms, e.std_ms, "
    "e.min_ms, e.n, e.settings_json, e.environment_json, e.reason, COALESCE(e.measured_in_uid, ?) FROM entries e "
    "WHERE e.version_id = ? AND NOT EXISTS (SELECT 1 FROM entries o WHERE o.version_id = ? AND o.key_hash = e.key_hash)"
)


def _check_lease(lease_s: float, release: bool = False) -> None:
    """A lease lasts a finite, positive time; a renewal of 0 s lets it go (`release`)."""
    if not (isinstance(lease_s, (int, float)) and math.isfinite(lease_s) and (lease_s > 0 or release and lease_s == 0)):
        what = "a finite number of seconds, positive (or 0 to let it go)" if release else "a finite, positive time"
        raise StoreError(f"lease_s = {lease_s!r}: a lease lasts {what}")


def _split(script: str) -> list[str]:
    """Statements of a migration script. Trigger bodies hold ';' so they end at 'END;'/'END $$;'."""
    statements, current = [], []
    for line in script.strip().splitlines():
        current.append(line)
        text = "\n".join(current).strip()
        in_body = ("BEGIN" in text and "END" not in text.split("BEGIN")[-1]) or text.count("$$") == 1
        if text.endswith(";") and not in_body:
            statements.append(text[:-1])
            current = []
    if current and "\n".join(current).strip():
        statements.append("\n".join(current).strip())
    return statements


def _version(row: Sequence[Any], entry_count: int = 0) -> Version:
    return Version(
        id=int(row[0]),
        uid=row[1],
        fingerprint_hash=row[2],
        parent_id=row[3],
        status=row[4],
        source=row[5],
        created_at_unix_s=row[6],
        sealed_at_unix_s=row[7],
        settings=json.loads(row[8]),
        note=row[9],
        lease_owner=row[10],
        lease_expires_unix_s=row[11],
        entry_count=entry_count,
    )


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(
        key_hash=row[0],
        key_json=row[1],
        status=row[2],
        measured_at_unix_s=row[3],
        median_ms=row[4],
        mean_ms=row[5],
        p90_ms=row[6],
        std_ms=row[7],
        min_ms=row[8],
        n=row[9],
        settings=json.loads(row[10]),
        environment=json.loads(row[11]),
        reason=row[12],
        measured_in_uid=row[13],
    )


def _model(row: Sequence[Any], size_bytes: int) -> RegisteredModel:
    return RegisteredModel(
        fingerprint_hash=row[0],
        model_sha256=row[1],
        batch_size=int(row[2]),
        name=row[3],
        kernels=tuple(json.loads(row[4])),
        size_bytes=int(size_bytes),
        registered_at_unix_s=row[5],
        last_used_unix_s=row[6],
    )


def _entry_params(version_id: int, e: Entry) -> tuple:
    return (
        version_id,
        e.key_hash,
        e.key_json,
        e.status,
        e.measured_at_unix_s,
        e.median_ms,
        e.mean_ms,
        e.p90_ms,
        e.std_ms,
        e.min_ms,
        e.n,
        json.dumps(e.settings, sort_keys=True),
        json.dumps(e.environment, sort_keys=True),
        e.reason,
        e.measured_in_uid,
    )


class SqlStore(LutStore):
    """The store over one DB-API connection; subclasses give the dialect."""

    placeholder = "?"
    migrations: tuple[tuple[str, str], ...] = ()

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.RLock()
        self._conn = self._connect()
        self._migrate()

    # --- dialect hooks -------------------------------------------------------------------
    def _connect(self) -> Any:
        raise NotImplementedError

    def _transaction(self, body: Callable[[Any], T]) -> T:
        """`body(cursor)` in one write transaction that holds the store's write lock; its result.
        The body may run more than once (PostgreSQL retries it on a new connection), so it reads
        what it needs inside the transaction and has no other side effects."""
        raise NotImplementedError

    def _now(self, cur: Any) -> float:
        """The clock leases, creations and seals are kept on (seconds since the Unix epoch)."""
        return time.time()

    def _translate(self, exc: Exception) -> Exception:
        """A database error as a StoreError subclass where it is one of ours."""
        text = str(exc)
        if "immutable" in text or "not open" in text:
            return VersionNotOpen(f"{self.shown_url}: {text.strip().splitlines()[0]}")
        return StoreError(f"{self.shown_url}: {type(exc).__name__}: {text.strip().splitlines()[0] if text else ''}")

    # --- helpers ---------------------------------------------------------------------------
    def _sql(self, query: str) -> str:
        return query if self.placeholder == "?" else query.replace("?", self.placeholder)

    def _query(self, query: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                cur = self._conn.cursor()
                cur.execute(self._sql(query), tuple(params))
                return cur.fetchall()
            except Exception as exc:  # driver errors differ by backend; translated here
                raise self._translate(exc) from None

    def _migrate(self) -> None:
        self._transaction(
            lambda cur: cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name TEXT PRIMARY KEY, applied_at_unix_s DOUBLE PRECISION NOT NULL)"
            )
        )
        for name, script in self.migrations:

            def apply(cur: Any, name: str = name, script: str = script) -> None:
                cur.execute(self._sql("SELECT 1 FROM schema_migrations WHERE name = ?"), (name,))
                if cur.fetchone():
                    return
                for statement in _split(script):
                    cur.execute(statement)
                cur.execute(self._sql("INSERT INTO schema_migrations VALUES (?, ?)"), (name, self._now(cur)))

            self._transaction(apply)

    def applied_migrations(self) -> list[str]:
        return [r[0] for r in self._query("SELECT name FROM schema_migrations ORDER BY name")]

    def _fetch_version(self, cur: Any, version_id: int) -> Version:
        cur.execute(self._sql(f"SELECT {_VERSION_COLUMNS} FROM versions WHERE id = ?"), (version_id,))
        row = cur.fetchone()
        if row is None:
            raise UnknownVersion(f"no LUT version {version_id} in {self.shown_url}")
        return _version(row)

    # --- LutStore --------------------------------------------------------------------------
    def ensure_device(self, fingerprint_hash: str, fingerprint: Mapping[str, Any]) -> Device:
        def body(cur: Any) -> Device:
            cur.execute(
                self._sql("SELECT fingerprint_json, first_seen_unix_s FROM devices WHERE fingerprint_hash = ?"),
                (fingerprint_hash,),
            )
            row = cur.fetchone()
            if row is not None:
                return Device(fingerprint_hash, json.loads(row[0]), row[1])
            now = self._now(cur)
            cur.execute(
                self._sql("INSERT INTO devices VALUES (?, ?, ?)"),
                (fingerprint_hash, json.dumps(dict(fingerprint), sort_keys=True), now),
            )
            return Device(fingerprint_hash, dict(fingerprint), now)

        return self._transaction(body)

    def devices(self) -> list[Device]:
        rows = self._query(
            "SELECT fingerprint_hash, fingerprint_json, first_seen_unix_s FROM devices ORDER BY first_seen_unix_s"
        )
        return [Device(r[0], json.loads(r[1]), r[2]) for r in rows]

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
        if source not in VERSION_SOURCES:
            raise StoreError(f"version source {source!r} is not one of {VERSION_SOURCES}")
        _check_lease(lease_s)

        def body(cur: Any) -> Build:
            self._lock_device(cur, fingerprint_hash)
            now = self._now(cur)
            parent = parent_id
            if parent is None:
                latest = self._latest(cur, fingerprint_hash)
                parent = latest[0] if latest else None
            resumable = self._resumable(cur, fingerprint_hash, source, parent, (owner, take_over_from), now)
            if resumable is not None:
                cur.execute(
                    self._sql("UPDATE versions SET lease_owner = ?, lease_expires_unix_s = ? WHERE id = ?"),
                    (owner, now + lease_s, resumable),
                )
                return Build(self._fetch_version(cur, resumable), owner, resumed=True)
            uid = uuid.uuid4().hex
            cur.execute(
                self._sql(
                    "INSERT INTO versions (uid, fingerprint_hash, parent_id, status, source, created_at_unix_s, "
                    "settings_json, note, lease_owner, lease_expires_unix_s) VALUES (?, ?, ?, 'open', ?, ?, ?, ?, ?, ?)"
                ),
                (
                    uid,
                    fingerprint_hash,
                    parent,
                    source,
                    now,
                    json.dumps(dict(settings or {}), sort_keys=True),
                    note,
                    owner,
                    now + lease_s,
                ),
            )
            cur.execute(self._sql("SELECT id FROM versions WHERE uid = ?"), (uid,))
            return Build(self._fetch_version(cur, int(cur.fetchone()[0])), owner, resumed=False)

        return self._transaction(body)

    def _resumable(
        self,
        cur: Any,
        fingerprint_hash: str,
        source: str,
        parent_id: int | None,
        holders: tuple[str, str | None],
        now: float,
    ) -> int | None:
        """The open version of this source and parent to resume: one of `holders` holds (the
        owner first, then a dead holder to take over), else the oldest whose lease expired."""
        cur.execute(
            self._sql(
                "SELECT id, parent_id, lease_owner, lease_expires_unix_s FROM versions "
                "WHERE fingerprint_hash = ? AND status = 'open' AND source = ? ORDER BY id"
            ),
            (fingerprint_hash, source),
        )
        same_parent = [r for r in cur.fetchall() if r[1] == parent_id]
        for holder in holders:
            for row in same_parent:
                if holder is not None and row[2] == holder:
                    return int(row[0])
        expired = [r for r in same_parent if r[2] is None or (r[3] or 0) <= now]
        return int(expired[0][0]) if expired else None

    def _latest(self, cur: Any, fingerprint_hash: str) -> tuple[int, str, float] | None:
        """(id, uid, sealed_at) of the fingerprint's newest sealed version, if any."""
        cur.execute(
            self._sql(
                "SELECT id, uid, sealed_at_unix_s FROM versions WHERE fingerprint_hash = ? AND status = 'sealed' "
                "ORDER BY sealed_at_unix_s DESC, id DESC LIMIT 1"
            ),
            (fingerprint_hash,),
        )
        row = cur.fetchone()
        return (int(row[0]), row[1], row[2]) if row else None

    def _lock_device(self, cur: Any, fingerprint_hash: str) -> None:
        """Check the device exists (the write transaction already serialises writers)."""
        cur.execute(self._sql("SELECT 1 FROM devices WHERE fingerprint_hash = ?"), (fingerprint_hash,))
        if cur.fetchone() is None:
            raise StoreError(
                f"device {fingerprint_hash[:16]} is not in {self.shown_url}: record it with ensure_device first"
            )

    def _check_owner(self, cur: Any, version_id: int, owner: str | None) -> Version:
        v = self._fetch_version(cur, version_id)
        if v.status != "open":
            raise VersionNotOpen(
                f"LUT version {version_id} is {v.status}: sealed versions are immutable; write into a new version"
            )
        if owner is not None and v.lease_owner != owner:
            raise LeaseLost(
                f"LUT version {version_id} is now held by {v.lease_owner}, not {owner}: this holder's lease expired"
            )
        return v

    def renew_lease(self, version_id: int, owner: str, lease_s: float) -> None:
        _check_lease(lease_s, release=True)

        def body(cur: Any) -> None:
            self._check_owner(cur, version_id, owner)
            cur.execute(
                self._sql("UPDATE versions SET lease_expires_unix_s = ? WHERE id = ?"),
                (self._now(cur) + lease_s, version_id),
            )

        self._transaction(body)

    def add_entries(self, version_id: int, entries: Sequence[Entry], owner: str | None = None) -> int:
        def body(cur: Any) -> None:
            self._check_owner(cur, version_id, owner)
            keys = [e.key_hash for e in entries]
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start : start + _LOOKUP_CHUNK]
                marks = ", ".join("?" * len(chunk))
                cur.execute(
                    self._sql(f"DELETE FROM entries WHERE version_id = ? AND key_hash IN ({marks})"),
                    (version_id, *chunk),
                )
            cur.executemany(
                self._sql(f"INSERT INTO entries (version_id, {_ENTRY_COLUMNS}) VALUES ({_ENTRY_MARKS})"),
                [_entry_params(version_id, e) for e in entries],
            )

        self._transaction(body)
        return len(entries)

    def _take_in_latest(self, cur: Any, version_id: int, fingerprint_hash: str, sealed_at: float) -> float:
        """Copy into `version_id` the entries of the fingerprint's latest sealed version that it
        lacks; return a seal time that orders it after that version."""
        latest = self._latest(cur, fingerprint_hash)
        if latest is None or latest[0] == version_id:
            return sealed_at
        latest_id, latest_uid, latest_sealed_at = latest
        cur.execute(self._sql(_TAKE_IN), (version_id, latest_uid, latest_id, version_id))
        return max(sealed_at, (latest_sealed_at or 0.0) + 1e-6)

    def seal(self, version_id: int, owner: str | None = None) -> Version:
        def body(cur: Any) -> None:
            v = self._check_owner(cur, version_id, owner)
            sealed_at = self._take_in_latest(cur, version_id, v.fingerprint_hash, self._now(cur))
            cur.execute(
                self._sql(
                    "UPDATE versions SET status = 'sealed', sealed_at_unix_s = ?, lease_owner = NULL, "
                    "lease_expires_unix_s = NULL WHERE id = ?"
                ),
                (sealed_at, version_id),
            )

        self._transaction(body)
        return self.version(version_id)

    def abandon(self, version_id: int) -> Version:
        def body(cur: Any) -> None:
            self._check_owner(cur, version_id, None)
            cur.execute(
                self._sql(
                    "UPDATE versions SET status = 'abandoned', lease_owner = NULL, lease_expires_unix_s = NULL "
                    "WHERE id = ?"
                ),
                (version_id,),
            )

        self._transaction(body)
        return self.version(version_id)

    def version(self, version_id: int) -> Version:
        rows = self._query(f"SELECT {_VERSION_COLUMNS} FROM versions WHERE id = ?", (version_id,))
        if not rows:
            raise UnknownVersion(f"no LUT version {version_id} in {self.shown_url}; `hadmc lut list` shows them")
        count = self._query("SELECT COUNT(*) FROM entries WHERE version_id = ?", (version_id,))[0][0]
        return _version(rows[0], int(count))

    def versions(self, fingerprint_hash: str | None = None) -> list[Version]:
        where, params = ("WHERE v.fingerprint_hash = ?", (fingerprint_hash,)) if fingerprint_hash else ("", ())
        cols = ", ".join(f"v.{c.strip()}" for c in _VERSION_COLUMNS.split(","))
        rows = self._query(
            f"SELECT {cols}, (SELECT COUNT(*) FROM entries e WHERE e.version_id = v.id) FROM versions v {where} "
            "ORDER BY COALESCE(v.sealed_at_unix_s, v.created_at_unix_s) DESC, v.id DESC",
            params,
        )
        return [_version(r[:12], int(r[12])) for r in rows]

    def entries(self, version_id: int) -> Iterator[Entry]:
        self.version(version_id)
        rows = self._query(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE version_id = ? ORDER BY key_hash", (version_id,)
        )
        return iter([_entry(r) for r in rows])

    def lookup(self, version_id: int, key_hashes: Iterable[str]) -> Lookup:
        keys = list(dict.fromkeys(key_hashes))
        found: dict[str, Entry] = {}
        for start in range(0, len(keys), _LOOKUP_CHUNK):
            chunk = keys[start : start + _LOOKUP_CHUNK]
            marks = ", ".join("?" * len(chunk))
            for row in self._query(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE version_id = ? AND key_hash IN ({marks})",
                (version_id, *chunk),
            ):
                found[row[0]] = _entry(row)
        if not found:
            self.version(version_id)  # an unknown version is an error, not an empty result
        return Lookup(version_id, found)

    def import_version(
        self, device: Device, version: Version, entries: Sequence[Entry], parent_uid: str | None
    ) -> Version:
        def body(cur: Any) -> int:
            cur.execute(self._sql("SELECT id FROM versions WHERE uid = ?"), (version.uid,))
            existing = cur.fetchone()
            if existing:
                raise StoreError(f"version {version.uid} is already in {self.shown_url} as version {existing[0]}")
            cur.execute(self._sql("SELECT 1 FROM devices WHERE fingerprint_hash = ?"), (device.fingerprint_hash,))
            if cur.fetchone() is None:
                cur.execute(
                    self._sql("INSERT INTO devices VALUES (?, ?, ?)"),
                    (device.fingerprint_hash, json.dumps(device.fingerprint, sort_keys=True), device.first_seen_unix_s),
                )
            parent_id = None
            if parent_uid:
                cur.execute(self._sql("SELECT id FROM versions WHERE uid = ?"), (parent_uid,))
                row = cur.fetchone()
                parent_id = int(row[0]) if row else None
            cur.execute(
                self._sql(
                    "INSERT INTO versions (uid, fingerprint_hash, parent_id, status, source, created_at_unix_s, "
                    "settings_json, note) VALUES (?, ?, ?, 'open', 'import', ?, ?, ?)"
                ),
                (
                    version.uid,
                    device.fingerprint_hash,
                    parent_id,
                    version.created_at_unix_s,
                    json.dumps(version.settings, sort_keys=True),
                    version.note,
                ),
            )
            cur.execute(self._sql("SELECT id FROM versions WHERE uid = ?"), (version.uid,))
            new_id = int(cur.fetchone()[0])
            cur.executemany(
                self._sql(f"INSERT INTO entries (version_id, {_ENTRY_COLUMNS}) VALUES ({_ENTRY_MARKS})"),
                [_entry_params(new_id, e) for e in entries],
            )
            sealed_at = version.sealed_at_unix_s or self._now(cur)
            latest = self._latest(cur, device.fingerprint_hash)
            if latest is not None and sealed_at >= (latest[2] or 0.0):  # it becomes the latest: hide nothing
                sealed_at = self._take_in_latest(cur, new_id, device.fingerprint_hash, sealed_at)
            cur.execute(
                self._sql("UPDATE versions SET status = 'sealed', sealed_at_unix_s = ? WHERE id = ?"),
                (sealed_at, new_id),
            )
            return new_id

        return self.version(self._transaction(body))

    # --- registered models -----------------------------------------------------------------
    def register_model(
        self,
        fingerprint_hash: str,
        name: str,
        onnx: bytes,
        batch_size: int,
        kernels: Sequence[str],
        used_at_unix_s: float | None = None,
    ) -> ModelRegistration:
        if batch_size < 1:
            raise StoreError(f"model {name}: batch size {batch_size} must be at least 1")
        if not onnx:
            raise StoreError(f"model {name}: no ONNX bytes to register")
        sha = hashlib.sha256(onnx).hexdigest()

        def body(cur: Any) -> ModelRegistration:
            self._lock_device(cur, fingerprint_hash)
            now = self._now(cur)
            used = now if used_at_unix_s is None else used_at_unix_s
            cur.execute(self._sql("SELECT 1 FROM model_blobs WHERE model_sha256 = ?"), (sha,))
            if cur.fetchone() is None:
                cur.execute(self._sql("INSERT INTO model_blobs VALUES (?, ?, ?)"), (sha, onnx, len(onnx)))
            where = "WHERE fingerprint_hash = ? AND model_sha256 = ? AND batch_size = ?"
            key = (fingerprint_hash, sha, batch_size)
            cur.execute(self._sql(f"SELECT registered_at_unix_s FROM registered_models {where}"), key)
            row = cur.fetchone()
            registered_at = row[0] if row else now
            cur.execute(self._sql(f"DELETE FROM registered_models {where}"), key)
            values = (*key, name, json.dumps(list(kernels)), registered_at, used)
            marks = ", ".join("?" * len(values))
            cur.execute(self._sql(f"INSERT INTO registered_models ({_MODEL_COLUMNS}) VALUES ({marks})"), values)
            evicted = self._evict(cur, self._limit(cur), fingerprint_hash)
            return ModelRegistration(_model(values, len(onnx)), tuple(evicted))

        return self._transaction(body)

    def _limit(self, cur: Any) -> int:
        cur.execute(self._sql("SELECT value_json FROM store_settings WHERE name = ?"), (_MODEL_LIMIT_SETTING,))
        row = cur.fetchone()
        return int(json.loads(row[0])) if row else DEFAULT_MODEL_LIMIT

    def _evict(self, cur: Any, limit: int, fingerprint_hash: str | None = None) -> list[RegisteredModel]:
        """Forget each device's least recently used models beyond `limit`, and bytes no model uses."""
        where, params = ("WHERE r.fingerprint_hash = ?", (fingerprint_hash,)) if fingerprint_hash else ("", ())
        cols = ", ".join(f"r.{c.strip()}" for c in _MODEL_COLUMNS.split(","))
        cur.execute(
            self._sql(
                f"SELECT {cols}, b.size_bytes FROM registered_models r JOIN model_blobs b "
                f"ON b.model_sha256 = r.model_sha256 {where} "
                "ORDER BY r.fingerprint_hash, r.last_used_unix_s DESC, r.registered_at_unix_s DESC, r.model_sha256"
            ),
            params,
        )
        kept: dict[str, int] = {}
        evicted = []
        for row in cur.fetchall():
            kept[row[0]] = kept.get(row[0], 0) + 1
            if kept[row[0]] > limit:
                evicted.append(_model(row[:7], row[7]))
        for m in evicted:
            cur.execute(
                self._sql(
                    "DELETE FROM registered_models WHERE fingerprint_hash = ? AND model_sha256 = ? AND batch_size = ?"
                ),
                (m.fingerprint_hash, m.model_sha256, m.batch_size),
            )
        cur.execute(
            "DELETE FROM model_blobs WHERE NOT EXISTS "
            "(SELECT 1 FROM registered_models r WHERE r.model_sha256 = model_blobs.model_sha256)"
        )
        return evicted

    def registered_models(self, fingerprint_hash: str) -> list[RegisteredModel]:
        cols = ", ".join(f"r.{c.strip()}" for c in _MODEL_COLUMNS.split(","))
        rows = self._query(
            f"SELECT {cols}, b.size_bytes FROM registered_models r JOIN model_blobs b "
            "ON b.model_sha256 = r.model_sha256 WHERE r.fingerprint_hash = ? "
            "ORDER BY r.last_used_unix_s DESC, r.registered_at_unix_s DESC, r.model_sha256",
            (fingerprint_hash,),
        )
        return [_model(r[:7], r[7]) for r in rows]

    def model_bytes(self, model_sha256: str) -> bytes:
        rows = self._query("SELECT onnx FROM model_blobs WHERE model_sha256 = ?", (model_sha256,))
        if not rows:
            raise UnknownModel(f"no registered model with sha256 {model_sha256[:16]} in {self.shown_url}")
        return bytes(rows[0][0])

    def model_limit(self) -> int:
        rows = self._query("SELECT value_json FROM store_settings WHERE name = ?", (_MODEL_LIMIT_SETTING,))
        return int(json.loads(rows[0][0])) if rows else DEFAULT_MODEL_LIMIT

    def set_model_limit(self, limit: int) -> list[RegisteredModel]:
        if limit < 0:
            raise StoreError(f"model limit {limit}: keep 0 or more models per device")

        def body(cur: Any) -> list[RegisteredModel]:
            cur.execute(self._sql("DELETE FROM store_settings WHERE name = ?"), (_MODEL_LIMIT_SETTING,))
            cur.execute(
                self._sql("INSERT INTO store_settings VALUES (?, ?)"), (_MODEL_LIMIT_SETTING, json.dumps(limit))
            )
            return self._evict(cur, limit)

        return self._transaction(body)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class SqliteStore(SqlStore):
    """SQLite in WAL mode with a busy timeout: several processes may write."""

    busy_timeout_s = 30.0
    migrations = (
        ("0001_initial", _COMMON_TABLES.format(id_type="INTEGER PRIMARY KEY AUTOINCREMENT") + ";\n" + _SQLITE_TRIGGERS),
        (
            "0002_concurrent_versions_and_registered_models",
            _CONCURRENT_VERSIONS_AND_MODELS.format(entries_v2=_SQLITE_ENTRIES_V2.strip(), blob_type="BLOB"),
        ),
    )

    def __init__(self, path: Path, url: str | None = None) -> None:
        self.path = Path(path)
        super().__init__(url or f"sqlite:///{self.path}")

    def _connect(self) -> sqlite3.Connection:
        """Processes that open a new file at once race to switch it to WAL, and SQLite answers the
        losers "database is locked" without waiting: they try again until the busy timeout."""
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                return self._open()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise self._cannot_open(exc) from None
                time.sleep(0.05)
            except (sqlite3.Error, OSError) as exc:
                raise self._cannot_open(exc) from None

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _cannot_open(self, exc: Exception) -> StoreError:
        return StoreError(
            f"cannot open the SQLite store {self.path}: {exc}; check that the file and its "
            "directory exist and are writable, or pass --store"
        )

    def _transaction(self, body: Callable[[sqlite3.Cursor], T]) -> T:
        with self._lock:
            try:
                cur = self._conn.cursor()  # a closed store's is a ProgrammingError: a StoreError here
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write to the SQLite store {self.path}: {exc}") from None
            try:
                result = body(cur)
                cur.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.rollback()
                if isinstance(exc, sqlite3.Error):
                    raise self._translate(exc) from None
                raise
            return result

    def _translate(self, exc: Exception) -> Exception:
        if "disk is full" in str(exc) or "disk I/O error" in str(exc):
            return StoreError(
                f"cannot write to the SQLite store {self.path}: {exc}; nothing of this write was stored "
                "and what the store held is intact: free space on its disk and run again"
            )
        return super()._translate(exc)

    def integrity_check(self) -> str:
        return self._query("PRAGMA integrity_check")[0][0]


class PostgresStore(SqlStore):
    """PostgreSQL through psycopg 3; writes serialise on a transaction-scoped advisory lock."""

    placeholder = "%s"
    migrations = (
        ("0001_initial", _COMMON_TABLES.format(id_type="BIGSERIAL PRIMARY KEY") + ";\n" + _POSTGRES_TRIGGERS),
        (
            "0002_concurrent_versions_and_registered_models",
            _CONCURRENT_VERSIONS_AND_MODELS.format(entries_v2=_POSTGRES_ENTRIES_V2.strip(), blob_type="BYTEA"),
        ),
    )

    def __init__(
        self,
        url: str,
        timeout_s: float = 10.0,
        reconnect_s: float = 60.0,
        statement_timeout_s: float = 120.0,
        lock_timeout_s: float = 60.0,
    ) -> None:
        """`timeout_s`: one connection attempt; `reconnect_s`: how long a call that lost its
        connection (a server restart, a failover) keeps reconnecting before it fails; a statement
        runs at most `statement_timeout_s`, and waits at most `lock_timeout_s` for another
        writer's lock."""
        self._timeout_s = timeout_s
        self.reconnect_s = reconnect_s
        self._timeouts_ms = (int(statement_timeout_s * 1000), int(lock_timeout_s * 1000))
        super().__init__(url)

    def _connect(self) -> Any:
        import psycopg

        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self._timeout_s)))
            conn.execute(f"SET statement_timeout = {self._timeouts_ms[0]}")
            conn.execute(f"SET lock_timeout = {self._timeouts_ms[1]}")
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to PostgreSQL at {redact_url(self.url)} within {self._timeout_s:g} s: "
                f"{str(exc).strip().splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        return conn

    def _lost(self) -> bool:
        return bool(self._conn.closed or self._conn.broken)

    def _reconnect(self, deadline: float) -> None:
        """A new connection, tried with backoff until `deadline` (time.monotonic())."""
        backoff_s, attempts = 0.1, 0
        while True:
            attempts += 1
            try:
                self._conn = self._connect()
                log.info("store.reconnected", url=self.shown_url, attempts=attempts)
                return
            except StoreError as exc:
                if time.monotonic() + backoff_s > deadline:
                    raise StoreUnavailable(
                        f"lost the connection to {self.shown_url} and could not reconnect within "
                        f"{self.reconnect_s:g} s ({attempts} attempts): {exc}"
                    ) from None
            time.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 2.0)

    def _retrying(self, op: Callable[[], T]) -> T:
        """`op()`, run again on a new connection when it failed because the connection was lost
        (never after a commit was sent: that raises CommitOutcomeUnknown)."""
        with self._lock:
            deadline = time.monotonic() + self.reconnect_s
            while True:
                if self._lost():
                    self._reconnect(deadline)
                try:
                    return op()
                except StoreError as exc:
                    if isinstance(exc, CommitOutcomeUnknown) or not self._lost():
                        raise
                    log.warning("store.connection_lost", url=self.shown_url, error=str(exc))

    def _query(self, query: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._retrying(lambda: super(PostgresStore, self)._query(query, params))

    def _now(self, cur: Any) -> float:
        """The server's clock, so that leases mean the same to every client whatever its clock."""
        cur.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())")
        return float(cur.fetchone()[0])

    def _transaction(self, body: Callable[[Any], T]) -> T:
        import psycopg

        def attempt() -> T:
            committing = False
            try:
                with self._conn.transaction():
                    cur = self._conn.cursor()
                    # One writer at a time, as SQLite's BEGIN IMMEDIATE: builds never interleave.
                    cur.execute("SELECT pg_advisory_xact_lock(731337)")
                    result = body(cur)
                    committing = True
                return result
            except psycopg.Error as exc:
                if committing and self._lost():
                    raise CommitOutcomeUnknown(
                        f"{self.shown_url}: the connection was lost while committing; the write may or may "
                        "not have been stored: check with `hadmc lut list` before repeating it"
                    ) from None
                raise self._translate(exc) from None

        return self._retrying(attempt)
