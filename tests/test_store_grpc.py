"""The gRPC front of the LUT store: exposure rule, token and TLS, status codes, bad requests,
batching, unreachable servers and `serve_store` as a process. The whole store suite also runs
over grpc:// (tests/test_store.py through the `store_url` fixture)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lut_store.exchange import export_version, import_version
from lut_store.grpc_front import LutServer
from lut_store.grpc_store import BATCH_ENTRIES, ERROR_METADATA_KEY, entry_to_proto
from lut_store.records import (
    Entry,
    LeaseLost,
    NoSealedVersion,
    StoreError,
    UnknownDevice,
    UnknownModel,
    UnknownVersion,
    VersionNotOpen,
)
from lut_store.sqlstore import SqliteStore
from lut_store.store import open_store
from protos.hadmc.v1 import lut_pb2, lut_pb2_grpc
from tests.test_security import TOKEN, _self_signed
from tests.test_store import FP, KEYS, ok_entry, sealed_version

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def served(tmp_path: Path, **kwargs: object) -> Iterator[LutServer]:
    """A LutServer on 127.0.0.1:0 over a fresh SQLite store."""
    with SqliteStore(tmp_path / "served.sqlite") as backing:
        server = LutServer(backing, "127.0.0.1:0", **kwargs).start()
        try:
            yield server
        finally:
            server.stop(grace_s=1.0)


@pytest.fixture()
def server(tmp_path) -> Iterator[LutServer]:
    with served(tmp_path) as s:
        yield s


@pytest.fixture()
def token_file(tmp_path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def test_beyond_loopback_needs_a_token_and_tls(tmp_path, token_file):
    with SqliteStore(tmp_path / "lut.sqlite") as backing:
        with pytest.raises(ValueError, match="beyond loopback without a token"):
            LutServer(backing, "0.0.0.0:0")
        with pytest.raises(ValueError, match="beyond loopback without TLS"):
            LutServer(backing, "0.0.0.0:0", token_file=token_file)
        short = tmp_path / "short"
        short.write_text("abc")
        with pytest.raises(ValueError, match="shorter than 16"):
            LutServer(backing, "127.0.0.1:0", token_file=short)


@pytest.mark.parametrize(
    "token, message", [(None, "missing 'authorization"), ("wrong-token-wrong-token", "invalid token")]
)
def test_missing_or_wrong_token_is_unauthenticated(tmp_path, token_file, token, message):
    with served(tmp_path, token_file=token_file) as server:
        with pytest.raises(StoreError, match=f"grpc://{server.address}: ListDevices: UNAUTHENTICATED: {message}"):
            open_store(f"grpc://{server.address}", token=token)
        with grpc.insecure_channel(server.address) as channel:  # health stays open for probes
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="hadmc.v1.LutStoreService"), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with open_store(f"grpc://{server.address}", token=TOKEN) as store:
            v = sealed_version(store)
            assert store.latest(FP).id == v.id


def test_tls_with_token(tmp_path, token_file):
    cert, key = _self_signed(tmp_path)
    with served(tmp_path, token_file=token_file, tls_cert=cert, tls_key=key) as server:
        url = f"grpc://{server.address}"
        with open_store(url, token=TOKEN, tls_ca=cert.read_bytes()) as store:
            v = sealed_version(store)
            assert store.lookup(v.id, [KEYS[2].hash]).entries[KEYS[2].hash].median_ms == 3.0
        with pytest.raises(StoreError, match=f"LUT store at {url}: ListDevices: UNAVAILABLE"):
            open_store(url, token=TOKEN, timeout_s=1)  # a plain-text client cannot talk to a TLS server


def test_store_errors_keep_their_class_and_status_code(server):
    with open_store(f"grpc://{server.address}") as store:
        with pytest.raises(UnknownDevice, match="known: none"):
            store.latest(FP)
        v = sealed_version(store)
        with pytest.raises(VersionNotOpen, match=f"LUT version {v.id} is sealed"):
            store.add_entries(v.id, [ok_entry(KEYS[0], 9.0)])
        with pytest.raises(UnknownVersion, match="no LUT version 999"):
            store.version(999)
        first = store.acquire_build(FP, "manual", "host-a:1", lease_s=0.3)
        time.sleep(0.4)
        taken = store.acquire_build(FP, "manual", "host-b:2", lease_s=60)
        assert taken.resumed and taken.version.id == first.version.id
        with pytest.raises(LeaseLost, match="held by host-b:2"):
            store.renew_lease(first.version.id, "host-a:1", lease_s=60)
        with pytest.raises(UnknownModel, match="no registered model"):
            store.model_bytes("0" * 64)
        store.ensure_device("c" * 64, {})
        with pytest.raises(NoSealedVersion, match="no sealed LUT version"):
            store.latest("c" * 64)
    with grpc.insecure_channel(server.address) as channel:
        stub = lut_pb2_grpc.LutStoreServiceStub(channel)
        for call, code, name in [
            (
                lambda: stub.GetVersion(lut_pb2.GetVersionRequest(version_id=999), timeout=5),
                grpc.StatusCode.NOT_FOUND,
                "UnknownVersion",
            ),
            (
                lambda: stub.Seal(lut_pb2.SealRequest(version_id=v.id), timeout=5),
                grpc.StatusCode.FAILED_PRECONDITION,
                "VersionNotOpen",
            ),
            (
                lambda: stub.RenewLease(
                    lut_pb2.RenewLeaseRequest(version_id=first.version.id, owner="host-a:1", lease_s=60), timeout=5
                ),
                grpc.StatusCode.ABORTED,
                "LeaseLost",
            ),
            (
                lambda: list(stub.Entries(lut_pb2.EntriesRequest(version_id=999), timeout=5)),
                grpc.StatusCode.NOT_FOUND,
                "UnknownVersion",
            ),
            (
                lambda: list(stub.ModelBytes(lut_pb2.ModelBytesRequest(model_sha256="0" * 64), timeout=5)),
                grpc.StatusCode.NOT_FOUND,
                "UnknownModel",
            ),
            (
                lambda: stub.Seal(lut_pb2.SealRequest(version_id=taken.version.id, owner="host-a:1"), timeout=5),
                grpc.StatusCode.ABORTED,
                "LeaseLost",
            ),
        ]:
            with pytest.raises(grpc.RpcError) as exc:
                call()
            assert exc.value.code() == code
            assert dict(exc.value.trailing_metadata())[ERROR_METADATA_KEY] == name


def test_bad_requests_are_invalid_argument_and_the_server_keeps_serving(server):
    with open_store(f"grpc://{server.address}") as store:
        store.ensure_device(FP, {})
        build = store.acquire_build(FP, "manual", "me", lease_s=60)
        with pytest.raises(StoreError, match="EnsureDevice: INVALID_ARGUMENT: fingerprint_hash is empty"):
            store.ensure_device("", {})
        good = entry_to_proto(ok_entry(KEYS[0]))
        no_status = lut_pb2.LutEntry(key_hash="k", key_json="{}", median_ms=1.0, n=10)
        no_median = lut_pb2.LutEntry(key_hash="k", key_json="{}", status=lut_pb2.LUT_ENTRY_STATUS_OK, n=10)
        bad_json = lut_pb2.LutEntry(
            key_hash="k", key_json="{}", status=lut_pb2.LUT_ENTRY_STATUS_FAILED, reason="x", environment_json="[1, 2]"
        )
        with grpc.insecure_channel(server.address) as channel:
            stub = lut_pb2_grpc.LutStoreServiceStub(channel)
            for request, message in [
                (
                    lut_pb2.AddEntriesRequest(version_id=build.version.id, entries=[good, no_status]),
                    "entries[1].status is unset or unknown (0)",
                ),
                (
                    lut_pb2.AddEntriesRequest(version_id=build.version.id, entries=[no_median]),
                    "entries[0]: entry k: an ok entry needs a median > 0 ms",
                ),
                (
                    lut_pb2.AddEntriesRequest(version_id=build.version.id, entries=[bad_json]),
                    "entries[0].environment_json is not a JSON object",
                ),
            ]:
                with pytest.raises(grpc.RpcError) as exc:
                    stub.AddEntries(request, timeout=5)
                assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert exc.value.details().startswith(message)
            with pytest.raises(grpc.RpcError) as exc:
                stub.AcquireBuild(lut_pb2.AcquireBuildRequest(fingerprint_hash=FP, owner="me", lease_s=60), timeout=5)
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert exc.value.details().startswith("source is unset or unknown (0)")
        # Nothing of a refused batch was written, and the server goes on serving.
        assert store.version(build.version.id).entry_count == 0
        assert store.add_entries(build.version.id, [ok_entry(KEYS[0])]) == 1
        assert store.version(build.version.id).entry_count == 1


def test_bad_model_uploads_are_invalid_argument_and_store_nothing(server):
    with open_store(f"grpc://{server.address}") as store:
        store.ensure_device(FP, {})
    data = b"model bytes"
    header = lut_pb2.RegisterModelHeader(
        fingerprint_hash=FP, name="m.onnx", model_sha256="0" * 64, size_bytes=len(data), batch_size=1
    )
    chunk = lut_pb2.RegisterModelRequest(onnx_chunk=data)
    with grpc.insecure_channel(server.address) as channel:
        stub = lut_pb2_grpc.LutStoreServiceStub(channel)
        for parts, message in [
            ([chunk], "the first message must be a header, got onnx_chunk"),
            ([lut_pb2.RegisterModelRequest(header=header), chunk], "the bytes hash to"),
            ([lut_pb2.RegisterModelRequest(header=header)], "upload truncated: 0 of header.size_bytes 11"),
            ([], "empty upload"),
        ]:
            with pytest.raises(grpc.RpcError) as exc:
                stub.RegisterModel(iter(parts), timeout=5)
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert exc.value.details().startswith(message)
    with open_store(f"grpc://{server.address}") as store:
        assert store.registered_models(FP) == []
        assert store.register_model(FP, "m.onnx", data, 1, ("k",)).model.size_bytes == len(data)


def test_large_writes_and_reads_are_batched(server):
    n_entries = 2 * BATCH_ENTRIES + 37
    entries = [
        Entry(
            key_hash=f"k{i:05d}",
            key_json="{}",
            status="ok",
            measured_at_unix_s=1.0,
            median_ms=1.0 + i,
            n=10,
            settings={"i": i},
        )
        for i in range(n_entries)
    ]
    with open_store(f"grpc://{server.address}") as store:
        store.ensure_device(FP, {"cpu": {"model": "test"}})
        build = store.acquire_build(FP, "search", "me", lease_s=60, settings={"grid": "small"}, note="batched")
        assert store.add_entries(build.version.id, entries, "me") == n_entries
        sealed = store.seal(build.version.id)
        assert (sealed.entry_count, sealed.source, sealed.settings, sealed.note) == (
            n_entries,
            "search",
            {"grid": "small"},
            "batched",
        )
        assert list(store.entries(sealed.id)) == entries
        found = store.lookup(sealed.id, [e.key_hash for e in entries] + ["missing"])
        assert len(found.entries) == n_entries and found.entries["k01036"].settings == {"i": 1036}
        assert store.lookup(sealed.id, []).entries == {}
        with pytest.raises(UnknownVersion):
            store.lookup(sealed.id + 1, [])


def test_import_through_the_front(server, tmp_path):
    with SqliteStore(tmp_path / "origin.sqlite") as origin:
        parent = sealed_version(origin)
        child = sealed_version(origin, medians=(2.0, 2.0, 2.0, 2.0, 2.0))
        export_version(origin, parent.id, tmp_path / "parent.jsonl")
        export_version(origin, child.id, tmp_path / "child.jsonl")
        with open_store(f"grpc://{server.address}") as store:
            imported_parent = import_version(store, tmp_path / "parent.jsonl")
            imported = import_version(store, tmp_path / "child.jsonl")
            assert (imported.uid, imported.status, imported.source, imported.parent_id) == (
                child.uid,
                "sealed",
                "import",
                imported_parent.id,
            )
            assert list(store.entries(imported.id)) == list(origin.entries(child.id))
            assert store.device(FP).fingerprint == {"cpu": {"model": "test"}}
            with pytest.raises(StoreError, match="already in"):
                import_version(store, tmp_path / "child.jsonl")


def test_unreachable_grpc_store_fails_within_its_timeout():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the TCP connection, never speaks HTTP/2
    silent_port = silent.getsockname()[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    try:
        for port in (silent_port, closed_port):
            t0 = time.monotonic()
            with pytest.raises(
                StoreError, match=f"LUT store at grpc://127.0.0.1:{port}: ListDevices: (DEADLINE_EXCEEDED|UNAVAILABLE)"
            ):
                open_store(f"grpc://127.0.0.1:{port}", timeout_s=1)
            assert time.monotonic() - t0 < 3
    finally:
        silent.close()


def test_serve_store_process_writes_its_ready_file_and_stops_on_sigterm(tmp_path):
    ready = tmp_path / "ready"
    db = tmp_path / "served.sqlite"
    code = (
        "import sys; from pathlib import Path; from lut_store.grpc_front import serve_store; "
        f"sys.exit(serve_store({f'sqlite:///{db}'!r}, '127.0.0.1:0', ready_file=Path({str(ready)!r})))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        address = ready.read_text().strip()
        assert address.startswith("127.0.0.1:")
        with open_store(f"grpc://{address}") as store:
            sealed_version(store)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not ready.exists() and not Path(f"{ready}.tmp").exists()
    with SqliteStore(db) as written:
        assert written.latest(FP).entry_count == 5


def test_a_run_config_reaches_a_token_and_tls_store(tmp_path, token_file):
    """`[lut] token_file` and `tls_ca` (the run commands' --store-token-file / --store-tls-ca)."""
    from host.workbench import LutSettings
    from lut_store.tomlfile import ConfigError

    cert, key = _self_signed(tmp_path)
    with served(tmp_path, token_file=token_file, tls_cert=cert, tls_key=key) as server:
        url = f"grpc://{server.address}"
        with LutSettings(token_file=str(token_file), tls_ca=str(cert)).open_store(url) as store:
            sealed = sealed_version(store)
            assert store.latest(FP).id == sealed.id
        with pytest.raises(StoreError, match="UNAUTHENTICATED"):
            LutSettings(tls_ca=str(cert)).open_store(url)
    with pytest.raises(ConfigError, match=r"\[lut\] cannot read .*missing\.pem"):
        LutSettings(tls_ca=str(tmp_path / "missing.pem")).open_store("grpc://127.0.0.1:1")
