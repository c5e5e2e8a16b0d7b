"""SQL backends of the store: SQLite (default) and PostgreSQL, one implementation.

The dialects differ only in connection set-up, placeholders, write locking and the schema's
trigger syntax. Sealed versions are immutable twice over: the store refuses the write with a
clear error, and database triggers refuse it for any other writer.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lut_store.interface import LutStore
from lut_store.records import (
    VERSION_SOURCES,
    Build,
    BuildInProgress,
    Device,
    Entry,
    LeaseLost,
    Lookup,
    StoreError,
    UnknownVersion,
    Version,
    VersionNotOpen,
)

_LOOKUP_CHUNK = 500

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

_SQLITE_TRIGGERS = """
CREATE TRIGGER entries_insert_only_into_open BEFORE INSERT ON entries
WHEN (SELECT status FROM versions WHERE id = NEW.version_id) IS NOT 'open'
BEGIN SELECT RAISE(ABORT, 'lut version is not open: sealed versions are immutable'); END;
CREATE TRIGGER entries_update_only_in_open BEFORE UPDATE ON entries
WHEN (SELECT status FROM versions WHERE id = OLD.version_id) IS NOT 'open'
BEGIN SELECT RAISE(ABORT, 'lut version is not open: sealed versions are immutable'); END;
CREATE TRIGGER entries_delete_only_from_open BEFORE DELETE ON entries
WHEN (SELECT status FROM versions WHERE id = OLD.version_id) IS NOT 'open'
BEGIN SELECT RAISE(ABORT, 'lut version is not open: sealed versions are immutable'); END;
CREATE TRIGGER sealed_versions_are_immutable BEFORE UPDATE ON versions WHEN OLD.status = 'sealed'
BEGIN SELECT RAISE(ABORT, 'lut version is sealed: immutable'); END;
CREATE TRIGGER sealed_versions_are_kept BEFORE DELETE ON versions WHEN OLD.status = 'sealed'
BEGIN SELECT RAISE(ABORT, 'lut version is sealed: immutable'); END
"""

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

_VERSION_COLUMNS = (
    "id, uid, fingerprint_hash, parent_id, status, source, created_at_unix_s, sealed_at_unix_s, "
    "settings_json, note, lease_owner, lease_expires_unix_s"
)
_ENTRY_COLUMNS = (
    "key_hash, key_json, status, measured_at_unix_s, median_ms, mean_ms, p90_ms, std_ms, min_ms, n, "
    "settings_json, environment_json, reason"
)


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

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """A write transaction that holds the store's write lock; yields a cursor."""
        raise NotImplementedError
        yield

    def _translate(self, exc: Exception) -> Exception:
        """A database error as a StoreError subclass where it is one of ours."""
        text = str(exc)
        if "immutable" in text or "not open" in text:
            return VersionNotOpen(f"{self.url}: {text.strip().splitlines()[0]}")
        return StoreError(f"{self.url}: {type(exc).__name__}: {text.strip().splitlines()[0] if text else ''}")

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
        with self._write() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name TEXT PRIMARY KEY, applied_at_unix_s DOUBLE PRECISION NOT NULL)"
            )
        for name, script in self.migrations:
            with self._write() as cur:
                cur.execute(self._sql("SELECT 1 FROM schema_migrations WHERE name = ?"), (name,))
                if cur.fetchone():
                    continue
                for statement in _split(script):
                    cur.execute(statement)
                cur.execute(self._sql("INSERT INTO schema_migrations VALUES (?, ?)"), (name, time.time()))

    def applied_migrations(self) -> list[str]:
        return [r[0] for r in self._query("SELECT name FROM schema_migrations ORDER BY name")]

    def _fetch_version(self, cur: Any, version_id: int) -> Version:
        cur.execute(self._sql(f"SELECT {_VERSION_COLUMNS} FROM versions WHERE id = ?"), (version_id,))
        row = cur.fetchone()
        if row is None:
            raise UnknownVersion(f"no LUT version {version_id} in {self.url}")
        return _version(row)

    # --- LutStore --------------------------------------------------------------------------
    def ensure_device(self, fingerprint_hash: str, fingerprint: Mapping[str, Any]) -> Device:
        with self._write() as cur:
            cur.execute(
                self._sql("SELECT fingerprint_json, first_seen_unix_s FROM devices WHERE fingerprint_hash = ?"),
                (fingerprint_hash,),
            )
            row = cur.fetchone()
            if row is not None:
                return Device(fingerprint_hash, json.loads(row[0]), row[1])
            now = time.time()
            cur.execute(
                self._sql("INSERT INTO devices VALUES (?, ?, ?)"),
                (fingerprint_hash, json.dumps(dict(fingerprint), sort_keys=True), now),
            )
            return Device(fingerprint_hash, dict(fingerprint), now)

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
        now = time.time()
        with self._write() as cur:
            self._lock_device(cur, fingerprint_hash)
            cur.execute(
                self._sql(f"SELECT {_VERSION_COLUMNS} FROM versions WHERE fingerprint_hash = ? AND status = 'open'"),
                (fingerprint_hash,),
            )
            row = cur.fetchone()
            if row is not None:
                v = _version(row)
                held = v.lease_owner not in (None, owner, take_over_from)
                if held and (v.lease_expires_unix_s or 0) > now:
                    raise BuildInProgress(
                        f"a build for device {fingerprint_hash[:16]} is in progress: version {v.id} held by "
                        f"{v.lease_owner} for {v.lease_expires_unix_s - now:.0f} s more; wait or retry later"
                    )
                cur.execute(
                    self._sql("UPDATE versions SET lease_owner = ?, lease_expires_unix_s = ? WHERE id = ?"),
                    (owner, now + lease_s, v.id),
                )
                return Build(self._fetch_version(cur, v.id), owner, resumed=True)
            if parent_id is None:
                cur.execute(
                    self._sql(
                        "SELECT id FROM versions WHERE fingerprint_hash = ? AND status = 'sealed' "
                        "ORDER BY sealed_at_unix_s DESC, id DESC LIMIT 1"
                    ),
                    (fingerprint_hash,),
                )
                parent = cur.fetchone()
                parent_id = int(parent[0]) if parent else None
            cur.execute(
                self._sql(
                    "INSERT INTO versions (uid, fingerprint_hash, parent_id, status, source, created_at_unix_s, "
                    "settings_json, note, lease_owner, lease_expires_unix_s) VALUES (?, ?, ?, 'open', ?, ?, ?, ?, ?, ?)"
                ),
                (
                    uuid.uuid4().hex,
                    fingerprint_hash,
                    parent_id,
                    source,
                    now,
                    json.dumps(dict(settings or {}), sort_keys=True),
                    note,
                    owner,
                    now + lease_s,
                ),
            )
            cur.execute(
                self._sql("SELECT id FROM versions WHERE fingerprint_hash = ? AND status = 'open'"), (fingerprint_hash,)
            )
            return Build(self._fetch_version(cur, int(cur.fetchone()[0])), owner, resumed=False)

    def _lock_device(self, cur: Any, fingerprint_hash: str) -> None:
        """Check the device exists (the write transaction already serialises builds)."""
        cur.execute(self._sql("SELECT 1 FROM devices WHERE fingerprint_hash = ?"), (fingerprint_hash,))
        if cur.fetchone() is None:
            raise StoreError(f"device {fingerprint_hash[:16]} is not in {self.url}: record it with ensure_device first")

    def _check_owner(self, cur: Any, version_id: int, owner: str | None) -> Version:
        v = self._fetch_version(cur, version_id)
        if v.status != "open":
            raise VersionNotOpen(
                f"LUT version {version_id} is {v.status}: sealed versions are immutable; write into a new version"
            )
        if owner is not None and v.lease_owner != owner:
            raise LeaseLost(
                f"LUT version {version_id} is now held by {v.lease_owner}, not {owner}: this build's lease expired"
            )
        return v

    def renew_lease(self, version_id: int, owner: str, lease_s: float) -> None:
        with self._write() as cur:
            self._check_owner(cur, version_id, owner)
            cur.execute(
                self._sql("UPDATE versions SET lease_expires_unix_s = ? WHERE id = ?"),
                (time.time() + lease_s, version_id),
            )

    def add_entries(self, version_id: int, entries: Sequence[Entry], owner: str | None = None) -> int:
        with self._write() as cur:
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
                self._sql(f"INSERT INTO entries (version_id, {_ENTRY_COLUMNS}) VALUES ({', '.join('?' * 14)})"),
                [_entry_params(version_id, e) for e in entries],
            )
        return len(entries)

    def _set_status(self, version_id: int, status: str) -> Version:
        with self._write() as cur:
            self._check_owner(cur, version_id, None)
            sealed_at = time.time() if status == "sealed" else None
            cur.execute(
                self._sql(
                    "UPDATE versions SET status = ?, sealed_at_unix_s = ?, lease_owner = NULL, "
                    "lease_expires_unix_s = NULL WHERE id = ?"
                ),
                (status, sealed_at, version_id),
            )
        return self.version(version_id)

    def seal(self, version_id: int) -> Version:
        return self._set_status(version_id, "sealed")

    def abandon(self, version_id: int) -> Version:
        return self._set_status(version_id, "abandoned")

    def version(self, version_id: int) -> Version:
        rows = self._query(f"SELECT {_VERSION_COLUMNS} FROM versions WHERE id = ?", (version_id,))
        if not rows:
            raise UnknownVersion(f"no LUT version {version_id} in {self.url}; `hadmc lut list` shows them")
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
        with self._write() as cur:
            cur.execute(self._sql("SELECT id FROM versions WHERE uid = ?"), (version.uid,))
            existing = cur.fetchone()
            if existing:
                raise StoreError(f"version {version.uid} is already in {self.url} as version {existing[0]}")
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
                self._sql(f"INSERT INTO entries (version_id, {_ENTRY_COLUMNS}) VALUES ({', '.join('?' * 14)})"),
                [_entry_params(new_id, e) for e in entries],
            )
            cur.execute(
                self._sql("UPDATE versions SET status = 'sealed', sealed_at_unix_s = ? WHERE id = ?"),
                (version.sealed_at_unix_s or time.time(), new_id),
            )
        return self.version(new_id)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class SqliteStore(SqlStore):
    """SQLite in WAL mode with a busy timeout: several processes may write."""

    busy_timeout_s = 30.0
    migrations = (
        ("0001_initial", _COMMON_TABLES.format(id_type="INTEGER PRIMARY KEY AUTOINCREMENT") + ";\n" + _SQLITE_TRIGGERS),
    )

    def __init__(self, path: Path, url: str | None = None) -> None:
        self.path = Path(path)
        super().__init__(url or f"sqlite:///{self.path}")

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = NORMAL")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"cannot open the SQLite store {self.path}: {exc}; check that the file and its "
                "directory exist and are writable, or pass --store"
            ) from None
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write to the SQLite store {self.path}: {exc}") from None
            try:
                yield cur
            except BaseException as exc:
                self._conn.rollback()
                if isinstance(exc, sqlite3.Error):
                    raise self._translate(exc) from None
                raise
            else:
                try:
                    cur.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._conn.rollback()
                    raise self._translate(exc) from None

    def integrity_check(self) -> str:
        return self._query("PRAGMA integrity_check")[0][0]


class PostgresStore(SqlStore):
    """PostgreSQL through psycopg 3; writes serialise on a transaction-scoped advisory lock."""

    placeholder = "%s"
    migrations = (
        ("0001_initial", _COMMON_TABLES.format(id_type="BIGSERIAL PRIMARY KEY") + ";\n" + _POSTGRES_TRIGGERS),
    )

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self._timeout_s = timeout_s
        super().__init__(url)

    def _connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self._timeout_s)))
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to PostgreSQL at {_redact(self.url)} within {self._timeout_s:g} s: "
                f"{str(exc).strip().splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None

    @contextmanager
    def _write(self) -> Iterator[Any]:
        import psycopg

        with self._lock:
            try:
                with self._conn.transaction():
                    cur = self._conn.cursor()
                    # One writer at a time, as SQLite's BEGIN IMMEDIATE: builds never interleave.
                    cur.execute("SELECT pg_advisory_xact_lock(731337)")
                    yield cur
            except psycopg.Error as exc:
                raise self._translate(exc) from None


def _redact(url: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db"""
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, cred = head.partition("//")
    user = cred.split(":", 1)[0]
    return f"{scheme}//{user}:***@{tail}"
