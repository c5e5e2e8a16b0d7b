"""What the `hadmc` subcommands share: their error, their output, and how they name a device."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


class CliError(Exception):
    """An error to print as `hadmc: error: ...` with a non-zero exit."""


def emit(doc: Any, as_json: bool, text: str) -> None:
    """Print one JSON document (--json) or the human-readable text."""
    print(json.dumps(doc, indent=2, sort_keys=True, default=str) if as_json else text)


def add_device_args(p: argparse.ArgumentParser, required: bool, many: bool = False) -> None:
    """--device and how to reach it (devices file, token, TLS, timeout)."""
    p.add_argument(
        "--device",
        required=required,
        metavar="HOST:PORT|NAME",
        action="append" if many else "store",
        help="agent address or a name in the devices file"
        + ("; repeat for several devices of one fingerprint" if many else "")
        + ("" if required else "; without it an embedded agent starts on 127.0.0.1"),
    )
    p.add_argument("--devices-file", type=Path, help="TOML file naming devices (default: $HADMC_HOME/devices.toml)")
    p.add_argument("--token-file", type=Path, help="file holding the agent's token")
    p.add_argument("--tls-ca", type=Path, help="CA certificate (PEM) to verify the agent's TLS certificate")
    p.add_argument("--tls-server-name", help="name the agent's certificate is checked against")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="per-call timeout in seconds")


def resolve_device(args: argparse.Namespace, device: str) -> Any:
    """The devices-file entry of `device` (a name, or HOST:PORT with the auth the args give)."""
    from host.fleet import resolve

    return resolve(device, args.devices_file, args.token_file, args.tls_ca, args.tls_server_name)
