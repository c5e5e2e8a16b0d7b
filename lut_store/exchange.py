"""Moving LUT versions between sites (JSON lines with a checksummed header) and diffing them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lut_store.interface import LutStore
from lut_store.records import CorruptExport, Device, Entry, RegisteredModel, StoreError, Version

EXPORT_FORMAT = "hadmc-lut"
# v2: the checksum covers the header (fingerprint, version times, settings) as well as the entries;
# v1 files (entries only) are still read.
EXPORT_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
HEADER_FIELDS = {"fingerprint_hash": str, "fingerprint": dict, "version": dict, "entries": int, "sha256": str}
VERSION_FIELDS = {
    "uid": str,
    "source": str,
    "created_at_unix_s": (int, float),
    "sealed_at_unix_s": (int, float),
    "settings": dict,
    "note": str,
}


def _digest(header: dict[str, Any], lines: list[str]) -> str:
    """SHA-256 over the header (v2: canonical JSON without its own `sha256`) and the entry lines."""
    digest = hashlib.sha256()
    if header.get("format_version", EXPORT_FORMAT_VERSION) >= 2:
        covered = {k: v for k, v in header.items() if k != "sha256"}
        digest.update(json.dumps(covered, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    for line in lines:
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()


def _entry_line(e: Entry) -> str:
    return json.dumps(dataclasses.asdict(e), sort_keys=True, separators=(",", ":"))


def export_version(store: LutStore, version_id: int, path: Path) -> dict[str, Any]:
    """Write a sealed version as JSON lines: a header, then one entry per line. Returns the header."""
    version = store.version(version_id)
    if version.status != "sealed":
        raise StoreError(f"LUT version {version_id} is {version.status}; only sealed versions are exported")
    device = store.device(version.fingerprint_hash)
    lines = [_entry_line(e) for e in store.entries(version_id)]
    parent_uid = store.version(version.parent_id).uid if version.parent_id is not None else None
    header = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "fingerprint_hash": version.fingerprint_hash,
        "fingerprint": device.fingerprint,
        "version": {
            "uid": version.uid,
            "source": version.source,
            "created_at_unix_s": version.created_at_unix_s,
            "sealed_at_unix_s": version.sealed_at_unix_s,
            "settings": version.settings,
            "note": version.note,
            "parent_uid": parent_uid,
            "exported_from_id": version.id,
        },
        "entries": len(lines),
    }
    header["sha256"] = _digest(header, lines)
    tmp = Path(f"{path}.tmp")
    with tmp.open("w") as f:
        f.write(json.dumps(header, sort_keys=True) + "\n")
        for line in lines:
            f.write(line + "\n")
    tmp.replace(path)
    return header


def read_export(path: Path) -> tuple[dict[str, Any], list[Entry]]:
    """Parse and verify an export; CorruptExport when truncated, altered or not an export."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptExport(f"cannot read {path}: {exc}") from None
    lines = text.split("\n")
    if not text.endswith("\n"):
        raise CorruptExport(f"{path} is truncated: its last line is incomplete")
    lines = lines[:-1]
    try:
        header = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise CorruptExport(f"{path} is not a hadmc LUT export (no '{EXPORT_FORMAT}' header)")
    if header.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise CorruptExport(
            f"{path} has export format v{header.get('format_version')}, this hadmc reads "
            + ", ".join(f"v{v}" for v in READABLE_FORMAT_VERSIONS)
        )
    _check_fields(path, "header", header, HEADER_FIELDS)
    _check_fields(path, "header's version", header["version"], VERSION_FIELDS)
    body = lines[1:]
    if len(body) != header["entries"]:
        raise CorruptExport(f"{path} is truncated or padded: {len(body)} entries, the header says {header['entries']}")
    if _digest(header, body) != header["sha256"]:
        raise CorruptExport(f"{path} fails its checksum: its header or entries were altered or damaged")
    try:
        entries = [Entry(**json.loads(line)) for line in body]
    except (TypeError, json.JSONDecodeError, StoreError) as exc:
        raise CorruptExport(f"{path} has a malformed entry: {exc}") from None
    for number, e in enumerate(entries, start=2):
        if hashlib.sha256(e.key_json.encode()).hexdigest() != e.key_hash:
            raise CorruptExport(
                f"{path}: line {number}'s key_hash {e.key_hash[:16]} is not the hash of its key: "
                "a latency would be filed under another kernel"
            )
    return header, entries


def _check_fields(path: Path, what: str, doc: dict[str, Any], fields: dict[str, Any]) -> None:
    for name, kind in fields.items():
        if name not in doc:
            raise CorruptExport(f"{path}: the {what} has no '{name}'")
        if not isinstance(doc[name], kind) or isinstance(doc[name], bool):
            raise CorruptExport(f"{path}: the {what}'s '{name}' is {type(doc[name]).__name__}, not the expected type")


def import_version(store: LutStore, path: Path) -> Version:
    """Import a verified export as a sealed version (same uid); nothing is written on error."""
    header, entries = read_export(path)
    v = header["version"]
    device = Device(header["fingerprint_hash"], header["fingerprint"], v["created_at_unix_s"])
    version = Version(
        id=0,
        uid=v["uid"],
        fingerprint_hash=header["fingerprint_hash"],
        parent_id=None,
        status="sealed",
        source="import",
        created_at_unix_s=v["created_at_unix_s"],
        sealed_at_unix_s=v["sealed_at_unix_s"],
        settings=v["settings"],
        note=v["note"],
    )
    return store.import_version(device, version, entries, v.get("parent_uid"))


@dataclass(frozen=True)
class KeyChange:
    key_hash: str
    kernel: str
    median_a_ms: float
    median_b_ms: float
    ratio: float


@dataclass(frozen=True)
class ModelChange:
    """A registered model's predicted latency (the sum of its kernels' mean latencies) in two versions."""

    name: str
    model_sha256: str
    batch_size: int
    predicted_a_ms: float
    predicted_b_ms: float
    ratio: float


@dataclass(frozen=True)
class Diff:
    """Per-key ratio of medians (b / a) over keys measured ok in both versions, each in its own
    measurement (an entry b carried forward from a's measurement is counted in `carried`, not
    compared); `in_model` of the compared keys are in-model kernels. `models`: the registered
    models of the device whose predicted latency moved most."""

    version_a: int
    version_b: int
    common: int
    median_ratio: float | None
    p5_ratio: float | None
    p95_ratio: float | None
    most_changed: list[KeyChange]
    only_in_a: int
    only_in_b: int
    not_ok_in_either: int
    in_model: int = 0
    carried: int = 0
    models: list[ModelChange] = dataclasses.field(default_factory=list)


def _quantile(sorted_values: list[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def kernel_name(key_json: str) -> str:
    from lut_store.opkey import OpKey, OpKeyError

    try:
        return OpKey.from_json(key_json).describe()
    except (OpKeyError, ValueError):
        return "?"


def is_in_model(key_json: str) -> bool:
    """Whether a stored key is an in-model kernel (measured inside a whole model)."""
    from lut_store.opkey import OpKey, OpKeyError

    try:
        return OpKey.from_json(key_json).context == "in-model"
    except (OpKeyError, ValueError):
        return False


def predicted_ms(entries: dict[str, Entry], kernels: tuple[str, ...]) -> float | None:
    """A model's latency from one version's entries as the predictor sums it (an elided kernel
    costs 0 ms); None when a kernel is missing there or cannot run."""
    found = [entries.get(k) for k in kernels]
    if not kernels or any(e is None or e.status not in ("ok", "elided") for e in found):
        return None
    return sum(float(e.mean_ms or e.median_ms) for e in found if e.status == "ok")


def _model_changes(
    models: list[RegisteredModel], ea: dict[str, Entry], eb: dict[str, Entry], top: int
) -> list[ModelChange]:
    changes = []
    for m in models:
        a, b = predicted_ms(ea, m.kernels), predicted_ms(eb, m.kernels)
        if a is not None and b is not None:
            changes.append(ModelChange(m.name, m.model_sha256, m.batch_size, a, b, b / a))
    return sorted(changes, key=lambda c: abs(math.log(c.ratio)), reverse=True)[:top]


def _device_models(store: LutStore, *fingerprints: str) -> list[RegisteredModel]:
    """The models registered for these fingerprints, each (sha256, batch size) once."""
    models: dict[tuple[str, int], RegisteredModel] = {}
    for fingerprint_hash in dict.fromkeys(fingerprints):
        for m in store.registered_models(fingerprint_hash):
            models.setdefault((m.model_sha256, m.batch_size), m)
    return list(models.values())


def diff_versions(store: LutStore, a: int, b: int, top: int = 10) -> Diff:
    va, vb = store.version(a), store.version(b)
    ea = {e.key_hash: e for e in store.entries(a)}
    eb = {e.key_hash: e for e in store.entries(b)}
    common = sorted(set(ea) & set(eb))
    changes = []
    not_ok = carried = 0
    for k in common:
        x, y = ea[k], eb[k]
        if (x.measured_in_uid or va.uid) == (y.measured_in_uid or vb.uid):
            carried += 1  # one measurement, found in both
            continue
        if x.status != "ok" or y.status != "ok":
            not_ok += 1
            continue
        changes.append(KeyChange(k, kernel_name(x.key_json), x.median_ms, y.median_ms, y.median_ms / x.median_ms))
    ratios = sorted(c.ratio for c in changes)
    most = sorted(changes, key=lambda c: abs(math.log(c.ratio)), reverse=True)[:top]
    return Diff(
        version_a=a,
        version_b=b,
        common=len(changes),
        median_ratio=_quantile(ratios, 0.5) if ratios else None,
        p5_ratio=_quantile(ratios, 0.05) if ratios else None,
        p95_ratio=_quantile(ratios, 0.95) if ratios else None,
        most_changed=most,
        only_in_a=len(set(ea) - set(eb)),
        only_in_b=len(set(eb) - set(ea)),
        not_ok_in_either=not_ok,
        in_model=sum(is_in_model(eb[c.key_hash].key_json) for c in changes),
        carried=carried,
        models=_model_changes(_device_models(store, vb.fingerprint_hash, va.fingerprint_hash), ea, eb, top),
    )
