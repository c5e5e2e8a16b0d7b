"""The device fingerprint as stored and compared (its document), and its hash: which facts about a
device change its measured latencies."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from protos.hadmc.v1 import agent_pb2

# Fields of the fingerprint document (agent.proto Fingerprint) that change measured latency.
# Hostname, memory size and kernel release are descriptive only, so identical devices share a
# fingerprint and can split one LUT build between them.
HASHED_FIELDS = (
    "profiler_version",
    "cpu.model",
    "cpu.architecture",
    "cpu.physical_cores",
    "cpu.logical_cores",
    "cpu.flags",
    "gpus",
    "gpu_driver_version",
    "cuda_version",
    "runtime",
    "runtime_version",
    "inference_precision",
    "onnxruntime_version",
    "execution_provider",
    "provider_options",
    "intra_op_threads",
    "inter_op_threads",
    "power_mode",
)
# Fields added after devices were fingerprinted, with the value every earlier device had: hashed
# only when set to another value, so the hashes (and LUTs) of those devices stay theirs.
LATER_HASHED_FIELDS = {"latency_statistic": "median"}


def document(fp: agent_pb2.Fingerprint) -> dict[str, Any]:
    """The fingerprint as a JSON-able dict with every field present: the form that is hashed,
    stored with a device and compared between devices."""
    return json_format.MessageToDict(fp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def _get(doc: Mapping[str, Any], dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def hashed_subset(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The latency-relevant fields of a fingerprint document, by dotted name."""
    subset = {name: _get(doc, name) for name in HASHED_FIELDS}
    for name, earlier in LATER_HASHED_FIELDS.items():
        if _get(doc, name) not in (None, "", earlier):
            subset[name] = _get(doc, name)
    return subset


def fingerprint_hash(doc: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the canonical JSON of the hashed fields."""
    canonical = json.dumps(hashed_subset(doc), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Hashed fields whose values differ between two documents: name -> (old, new)."""
    names = (*HASHED_FIELDS, *LATER_HASHED_FIELDS)

    def values(doc: Mapping[str, Any]) -> dict[str, Any]:
        subset = hashed_subset(doc)  # a later field left out holds its earlier value
        return {k: subset.get(k, LATER_HASHED_FIELDS.get(k)) for k in names}

    a, b = values(old), values(new)
    return {k: (a[k], b[k]) for k in names if a[k] != b[k]}
