"""`hadmc lut ...` and `hadmc devices ...`: build, inspect, compare, move and serve LUT versions."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from host.cli_common import CliError, add_device_args, device_config, emit

EXIT_INCOMPLETE = 3


def _store(args: argparse.Namespace) -> Any:
    from lut_store.store import open_store

    token = Path(args.store_token_file).read_text().strip() if getattr(args, "store_token_file", None) else None
    ca = Path(args.store_tls_ca).read_bytes() if getattr(args, "store_tls_ca", None) else None
    return open_store(args.store, token=token, tls_ca=ca)


def _version_doc(v: Any) -> dict[str, Any]:
    return dataclasses.asdict(v)


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        width = 40
        filled = int(width * done / max(total, 1))
        print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} keys", end="", file=sys.stderr, flush=True)
        if done >= total:
            print(file=sys.stderr)
    elif done and (done == total or done % 50 == 0):
        print(f"profiled {done}/{total} keys", file=sys.stderr, flush=True)


def cmd_lut_build(args: argparse.Namespace) -> int:
    from host.device import open_device
    from lut_store.build import BuildPlan, build_lut, report_dict
    from lut_store.fingerprint import differences, document
    from lut_store.precision import device_precisions

    with ExitStack() as stack:
        clients = [stack.enter_context(open_device(device_config(args, name))) for name in args.device]
        infos = [c.info() for c in clients]
        hashes = {i.fingerprint_hash for i in infos}
        if len(hashes) > 1:
            diff = differences(document(infos[0].fingerprint), document(infos[1].fingerprint))
            raise CliError(
                f"devices {', '.join(c.endpoint.label for c in clients)} have different fingerprints "
                f"(e.g. {diff}); one LUT version covers one fingerprint: build them separately"
            )
        info = infos[0]
        precisions = args.precisions.split(",") if args.precisions else list(device_precisions(info))
        if args.grid:
            from lut_store.keys.grid import load_grid

            keys = load_grid(args.grid, precisions)
        else:
            from host.lut_models import model_keys

            keys = model_keys(args.model, precisions)
        store = stack.enter_context(_store(args))
        print(
            f"building a LUT of {len(keys)} keys for device {info.fingerprint_hash[:16]} on "
            f"{len(clients)} device(s) into {store.shown_url}",
            file=sys.stderr,
        )
        report = build_lut(
            store,
            info.fingerprint_hash,
            document(info.fingerprint),
            keys,
            clients,
            BuildPlan(source="manual", note=args.note or "", retries=args.retries, retry_wait_s=args.retry_wait),
            progress=None if args.json else _progress,
        )
    doc = report_dict(report)
    text = (
        f"version {report.version_id} {'sealed' if report.sealed else 'left OPEN'}: "
        f"{report.measured_ok} measured, {report.unsupported} unsupported, {report.failed} failed, "
        f"{report.already_stored} resumed from an earlier run, {len(report.missing)} missing "
        f"in {report.elapsed_s:.1f} s"
    )
    for item in doc["missing"][:10]:
        text += f"\n  missing {item['key_hash'][:12]}: {item['reason']}"
    if report.missing:
        text += "\nrerun the same command when the device is back: the build resumes this version"
    emit(doc, args.json, text)
    return 0 if report.sealed else EXIT_INCOMPLETE


def cmd_lut_list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        versions = store.versions(args.fingerprint)
    rows = [f"{'id':>5}  {'device':<16}  {'status':<9}  {'source':<8}  {'entries':>7}  {'parent':>6}  note"]
    for v in versions:
        rows.append(
            f"{v.id:>5}  {v.fingerprint_hash[:16]:<16}  {v.status:<9}  {v.source:<8}  {v.entry_count:>7}  "
            f"{v.parent_id if v.parent_id is not None else '-':>6}  {v.note}"
        )
    emit([_version_doc(v) for v in versions], args.json, "\n".join(rows) if versions else "no LUT versions")
    return 0


def _age_text(seconds: float) -> str:
    return f"{seconds / 86400:.1f} d" if seconds >= 86400 else f"{seconds / 3600:.1f} h"


def cmd_lut_show(args: argparse.Namespace) -> int:
    import time

    from lut_store.exchange import kernel_name

    with _store(args) as store:
        v = store.version(args.version)
        entries = list(store.entries(args.version))
        ids = {u.uid: u.id for u in store.versions(v.fingerprint_hash)}
    carried = sum(e.measured_in_uid is not None for e in entries)
    lines = [
        f"version {v.id} ({v.uid}) of device {v.fingerprint_hash[:16]}: {v.status}, {v.source}, "
        f"{len(entries)} entries ({carried} carried forward from earlier versions), parent {v.parent_id}"
    ]
    now = time.time()
    for e in entries:
        value = f"{e.median_ms:10.4f} ms  n={e.n}" if e.status == "ok" else f"{e.status}: {e.reason}"
        origin = ""
        if e.measured_in_uid is not None:
            where = ids.get(e.measured_in_uid, e.measured_in_uid[:12])
            origin = f"  (from v{where}, {_age_text(now - e.measured_at_unix_s)} old)"
        lines.append(f"  {e.key_hash[:12]}  {kernel_name(e.key_json):<48} {value}{origin}")
    doc = {"version": _version_doc(v), "entries": [dataclasses.asdict(e) for e in entries]}
    emit(doc, args.json, "\n".join(lines))
    return 0


def _ratio_text(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def cmd_lut_diff(args: argparse.Namespace) -> int:
    from lut_store.exchange import diff_versions

    with _store(args) as store:
        d = diff_versions(store, args.a, args.b)
    lines = [
        f"version {d.version_b} / version {d.version_a}: {d.common} keys measured in both ({d.in_model} in-model), "
        f"median ratio {_ratio_text(d.median_ratio)} (p5 {_ratio_text(d.p5_ratio)}, p95 {_ratio_text(d.p95_ratio)}); "
        f"{d.carried} carried forward unchanged; only in {d.version_a}: {d.only_in_a}, only in {d.version_b}: "
        f"{d.only_in_b}, not ok in either: {d.not_ok_in_either}"
    ]
    for c in d.most_changed:
        lines.append(f"  x{c.ratio:6.3f}  {c.median_a_ms:9.4f} -> {c.median_b_ms:9.4f} ms  {c.kernel}")
    if d.models:
        lines.append("registered models, predicted latency:")
    for m in d.models:
        lines.append(f"  x{m.ratio:6.3f}  {m.predicted_a_ms:9.4f} -> {m.predicted_b_ms:9.4f} ms  {m.name}")
    emit(dataclasses.asdict(d), args.json, "\n".join(lines))
    return 0


def cmd_lut_models(args: argparse.Namespace) -> int:
    with _store(args) as store:
        evicted = store.set_model_limit(args.keep) if args.keep is not None else []
        limit = store.model_limit()
        fingerprints = [args.fingerprint] if args.fingerprint else [d.fingerprint_hash for d in store.devices()]
        models = [m for f in fingerprints for m in store.registered_models(f)]
    lines = [f"keeping the {limit} most recently used models per device; {len(models)} registered"]
    lines += [f"evicted {m.name} (device {m.fingerprint_hash[:16]})" for m in evicted]
    for m in models:
        lines.append(
            f"  {m.fingerprint_hash[:16]}  {m.model_sha256[:12]}  batch {m.batch_size}  {len(m.kernels):>4} kernels  "
            f"{m.size_bytes / 2**20:8.2f} MiB  {m.name}"
        )
    doc = {
        "limit": limit,
        "models": [dataclasses.asdict(m) for m in models],
        "evicted": [dataclasses.asdict(m) for m in evicted],
    }
    emit(doc, args.json, "\n".join(lines))
    return 0


def cmd_lut_export(args: argparse.Namespace) -> int:
    from lut_store.exchange import export_version

    with _store(args) as store:
        header = export_version(store, args.version, args.output)
    emit(header, args.json, f"exported version {args.version} ({header['entries']} entries) to {args.output}")
    return 0


def cmd_lut_import(args: argparse.Namespace) -> int:
    from lut_store.exchange import import_version

    with _store(args) as store:
        v = import_version(store, args.file)
    emit(_version_doc(v), args.json, f"imported as version {v.id} ({v.entry_count} entries, sealed)")
    return 0


def cmd_lut_serve(args: argparse.Namespace) -> int:
    from lut_store.grpc_front import serve_store

    return serve_store(
        args.store,
        args.listen,
        token_file=args.token_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        insecure=args.insecure,
        ready_file=args.ready_file,
    )


def cmd_devices_list(args: argparse.Namespace) -> int:
    from host.agent_client import AgentClient, AgentError
    from host.fleet import load_devices, resolve

    if args.device:
        entries = [resolve(args.device, args.devices_file, args.token_file, args.tls_ca, args.tls_server_name)]
    else:
        entries = [entry for _, entry in sorted(load_devices(args.devices_file).items())]
    rows = []
    for entry in entries:
        row: dict[str, Any] = {"name": entry.name, "address": entry.address}
        try:  # one quick try each: a listing reports a device that is down, it does not wait for it
            with AgentClient(entry.target(), timeout_s=args.timeout, retries=1, endpoint=entry.endpoint()) as client:
                row["health"] = client.health()
                info = client.info()
                row["fingerprint_hash"] = info.fingerprint_hash
                row["cpu"] = info.fingerprint.cpu.model
                row["execution_provider"] = info.fingerprint.execution_provider
        except (AgentError, ValueError) as exc:
            row["health"] = "UNREACHABLE"
            row["error"] = str(exc)
        rows.append(row)
    lines = [
        f"{r['name']:<16} {r['address']:<24} {r['health']:<12} {r.get('fingerprint_hash', '')[:16]}  "
        f"{r.get('error', r.get('cpu', ''))}"
        for r in rows
    ]
    emit(rows, args.json, "\n".join(lines) if rows else "no devices in the devices file")
    return 0


def _add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        metavar="URL",
        help="sqlite:///PATH, postgresql://..., grpc://HOST:PORT (default: SQLite under $HADMC_HOME)",
    )
    p.add_argument("--store-token-file", type=Path, help="token for a grpc:// store")
    p.add_argument("--store-tls-ca", type=Path, help="CA certificate of a grpc:// store")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")


def _add_build_parser(lut: Any) -> None:
    build = lut.add_parser("build", help="profile a model's or a grid's kernels into a new sealed version")
    add_device_args(build, required=True, many="repeat for several devices of one fingerprint")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model name (resnet18): its layers under a sweep of channel widths")
    source.add_argument("--grid", type=Path, help="TOML grid of op parameters (see lut_store/keys/grid.py)")
    build.add_argument("--precisions", help="comma-separated (default: every precision the device runs)")
    build.add_argument("--note", help="a note stored with the version")
    build.add_argument("--retries", type=int, default=3, help="rounds of retrying keys a passing failure left")
    build.add_argument("--retry-wait", type=float, default=10.0, metavar="S", help="seconds between rounds")
    _add_store_args(build)
    build.set_defaults(func=cmd_lut_build)


def _add_version_parsers(lut: Any) -> None:
    """list, show, diff, export, import and models: LUT versions in a store."""
    ls = lut.add_parser("list", help="LUT versions, newest first")
    ls.add_argument("--fingerprint", help="only this device fingerprint hash")
    _add_store_args(ls)
    ls.set_defaults(func=cmd_lut_list)
    show = lut.add_parser("show", help="one version and its entries")
    show.add_argument("version", type=int)
    _add_store_args(show)
    show.set_defaults(func=cmd_lut_show)
    diff = lut.add_parser("diff", help="per-key ratio of medians between two versions")
    diff.add_argument("a", type=int)
    diff.add_argument("b", type=int)
    _add_store_args(diff)
    diff.set_defaults(func=cmd_lut_diff)
    export = lut.add_parser("export", help="write a sealed version as checksummed JSON lines")
    export.add_argument("version", type=int)
    export.add_argument("-o", "--output", type=Path, required=True)
    _add_store_args(export)
    export.set_defaults(func=cmd_lut_export)
    imp = lut.add_parser("import", help="read an export into the store as a sealed version")
    imp.add_argument("file", type=Path)
    _add_store_args(imp)
    imp.set_defaults(func=cmd_lut_import)
    models = lut.add_parser("models", help="the models each device's LUT is kept fresh for (and how many)")
    models.add_argument("--fingerprint", help="only this device fingerprint hash")
    models.add_argument("--keep", type=int, metavar="N", help="keep the N most recently used models per device")
    _add_store_args(models)
    models.set_defaults(func=cmd_lut_models)


def _add_serve_parser(lut: Any) -> None:
    serve = lut.add_parser("serve", help="serve a store over gRPC (grpc:// URLs elsewhere)")
    serve.add_argument("--listen", default="127.0.0.1:50052", metavar="HOST:PORT")
    serve.add_argument("--store", metavar="URL", help="the store to serve (default: SQLite under $HADMC_HOME)")
    serve.add_argument("--token-file", type=Path)
    serve.add_argument("--tls-cert", type=Path)
    serve.add_argument("--tls-key", type=Path)
    serve.add_argument("--insecure", action="store_true", help="allow a non-loopback address without TLS")
    serve.add_argument("--ready-file", type=Path, help="write the bound HOST:PORT here once serving")
    serve.set_defaults(func=cmd_lut_serve)


def add_parsers(sub: Any) -> None:
    """Register `lut` and `devices` on the top-level subparsers."""
    lut = sub.add_parser("lut", help="versioned latency look-up tables").add_subparsers(
        dest="lut_command", required=True
    )
    _add_build_parser(lut)
    _add_version_parsers(lut)
    _add_serve_parser(lut)

    devices = sub.add_parser("devices", help="the fleet in the devices file").add_subparsers(
        dest="devices_command", required=True
    )
    dl = devices.add_parser("list", help="each device's health and fingerprint (--device: only that one)")
    add_device_args(dl, required=False, timeout_s=5.0, absent="without it every device in the devices file")
    dl.add_argument("--json", action="store_true", help="one JSON document on stdout")
    dl.set_defaults(func=cmd_devices_list)
