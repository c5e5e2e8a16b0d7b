"""What the `hadmc` subcommands share: their error, their output, and how they name a device."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from host.device import DeviceConfig


class CliError(Exception):
    """An error to print as `hadmc: error: ...` with a non-zero exit."""


def emit(doc: Any, as_json: bool, text: str) -> None:
    """Print one JSON document (--json) or the human-readable text."""
    print(json.dumps(doc, indent=2, sort_keys=True, default=str) if as_json else text)


def add_device_args(
    p: argparse.ArgumentParser,
    required: bool,
    many: str = "",
    timeout_s: float | None = 30.0,
    absent: str = "without it an embedded agent starts on 127.0.0.1",
) -> None:
    """--device (repeatable when `many` says why; `absent`: what its absence means) and how to
    reach it: devices file, token, TLS, per-call timeout (`timeout_s`; None for a run, whose
    `[device] timeout_s` then applies)."""
    p.add_argument(
        "--device",
        required=required,
        metavar="NAME|HOST:PORT",
        action="append" if many else "store",
        help="a name in the devices file, or an agent's HOST:PORT"
        + (f"; {many}" if many else "")
        + ("" if required else f"; {absent}"),
    )
    p.add_argument("--devices-file", type=Path, help="TOML file naming devices (default: $HADMC_HOME/devices.toml)")
    p.add_argument("--token-file", type=Path, help="file holding the agent's token")
    p.add_argument("--tls-ca", type=Path, help="CA certificate (PEM) to verify the agent's TLS certificate")
    p.add_argument("--tls-server-name", help="name the agent's certificate is checked against")
    p.add_argument("--timeout", type=float, default=timeout_s, metavar="S", help="per-call timeout in seconds")


def device_config(args: argparse.Namespace, name: str | None = None) -> DeviceConfig:
    """The `[device]` the device args name (`name`: one of several --device), for `open_device`."""
    from host.device import DeviceConfig

    return DeviceConfig(
        name=(args.device if name is None else name) or "",
        devices_file=_text(args.devices_file),
        token_file=_text(args.token_file),
        tls_ca=_text(args.tls_ca),
        tls_server_name=args.tls_server_name or "",
        timeout_s=args.timeout,
        reconnect_s=0.0,  # a one-shot command reports a device that went away; a run waits for it
        agent_config=_text(getattr(args, "agent_config", None)),
        threads=0,  # an embedded agent's threads: as its agent config says
    )


def add_lut_args(p: argparse.ArgumentParser) -> None:
    """--lut-version and --offline: which LUT a run's predictions start from; the credentials of a
    grpc:// store."""
    p.add_argument("--lut-version", type=int, metavar="N", help="pin this LUT version (default: the newest sealed)")
    p.add_argument(
        "--offline", action="store_true", help="profile nothing on demand: a kernel the LUT lacks is an error"
    )
    p.add_argument("--store-token-file", type=Path, help="token of a grpc:// store")
    p.add_argument("--store-tls-ca", type=Path, help="CA certificate (PEM) of a grpc:// store")


def lut_table(args: argparse.Namespace) -> dict[str, Any]:
    """The LUT args as `[lut]` overrides (None: the config's own)."""
    return {
        "version": args.lut_version,
        "offline": True if args.offline else None,
        "token_file": None if args.store_token_file is None else str(args.store_token_file),
        "tls_ca": None if args.store_tls_ca is None else str(args.store_tls_ca),
    }


def device_table(args: argparse.Namespace) -> dict[str, Any]:
    """The device args as `[device]` overrides of a run's config (None: the config's own)."""
    return {
        "name": args.device,
        "devices_file": None if args.devices_file is None else str(args.devices_file),
        "token_file": None if args.token_file is None else str(args.token_file),
        "tls_ca": None if args.tls_ca is None else str(args.tls_ca),
        "tls_server_name": args.tls_server_name,
        "timeout_s": args.timeout,
    }


def _text(path: Path | None) -> str:
    return "" if path is None else str(path)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model, --factory-kwargs and --weights: the config's model, overridden."""
    p.add_argument("--model", help="a built-in name, or your own: package.module:factory or file.py:factory")
    p.add_argument("--factory-kwargs", help="the factory's keyword arguments as a JSON object")
    p.add_argument("--weights", help="the trained teacher's state_dict (torch.save): loaded, not retrained")


def factory_kwargs(text: str | None) -> dict[str, Any] | None:
    """--factory-kwargs as a dict (None when not given)."""
    if text is None:
        return None
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"--factory-kwargs is not JSON: {exc}") from None
    if not isinstance(kwargs, dict):
        raise CliError("--factory-kwargs must be a JSON object, e.g. '{\"width\": 32}'")
    return kwargs


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys --model, --factory-kwargs and --weights set (None: keep the config's)."""
    return {"model": args.model, "factory_kwargs": factory_kwargs(args.factory_kwargs), "weights": args.weights}
