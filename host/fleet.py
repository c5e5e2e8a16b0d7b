"""A fleet of devices named in a TOML file, so `--device NAME` works everywhere.

```toml
[devices.jetson-1]
address = "jetson-1.lab:50051"
token_file = "/etc/hadmc/jetson.token"
tls_ca = "/etc/hadmc/ca.pem"          # omit for a plaintext agent on loopback
tls_server_name = "jetson-1"          # optional: the name the certificate carries
```
The file is `--devices-file`, else $HADMC_HOME/devices.toml, else ~/.config/hadmc/devices.toml.
A relative `token_file` or `tls_ca` is relative to the devices file's folder.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from host.agent_client import AgentTarget, Endpoint
from lut_store.tomlfile import read_toml

_FIELDS = ("address", "token_file", "tls_ca", "tls_server_name")


class FleetError(ValueError):
    """A devices file or device name that cannot be used."""


@dataclass(frozen=True)
class DeviceEntry:
    """A device as resolved: its address and the files that authenticate it (never their contents)."""

    name: str
    address: str
    token_file: Path | None = None
    tls_ca: Path | None = None
    tls_server_name: str | None = None
    devices_file: Path | None = None  # where the name was found; None for a bare HOST:PORT

    def target(self) -> AgentTarget:
        """The address with the token and CA read from their files (FleetError names an unreadable one)."""
        try:
            target = AgentTarget.from_files(self.address, self.token_file, self.tls_ca, self.tls_server_name)
        except OSError as exc:
            raise FleetError(f"device {self.name}: cannot read {exc.filename}: {exc.strerror}") from None
        if target.token == "":
            raise FleetError(f"device {self.name}: token file {self.token_file} is empty")
        return target

    def endpoint(self) -> Endpoint:
        """What a run records about how it reached the device."""
        return Endpoint(
            self.name,
            self.address,
            self.token_file is not None,
            self.tls_ca is not None,
            self.tls_server_name,
            None if self.devices_file is None else str(self.devices_file),
            None if self.token_file is None else str(self.token_file),
            None if self.tls_ca is None else str(self.tls_ca),
        )


def default_devices_file() -> Path:
    home = os.environ.get("HADMC_HOME")
    if home:
        return Path(home) / "devices.toml"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "hadmc" / "devices.toml"


def load_devices(path: Path | None = None) -> dict[str, DeviceEntry]:
    """Devices by name; an absent default file is an empty fleet, an absent named file an error."""
    explicit = path is not None
    path = path or default_devices_file()
    if not path.exists():
        if explicit:
            raise FleetError(f"devices file {path} does not exist")
        return {}
    doc = read_toml(path, "devices file", FleetError)
    extra = set(doc) - {"devices"}
    if extra:
        raise FleetError(f"devices file {path}: unknown top-level keys {sorted(extra)}; expected [devices.NAME] tables")
    devices = {}
    for name, table in doc.get("devices", {}).items():
        for key in table:
            if key not in _FIELDS:
                near = difflib.get_close_matches(key, _FIELDS, n=1)
                raise FleetError(
                    f"devices file {path}: device {name}: unknown key {key!r}"
                    + (f"; did you mean {near[0]!r}?" if near else f"; valid: {', '.join(_FIELDS)}")
                )
        if "address" not in table:
            raise FleetError(f"devices file {path}: device {name} has no address")
        devices[name] = DeviceEntry(
            name,
            table["address"],
            _file(table, "token_file", path),
            _file(table, "tls_ca", path),
            table.get("tls_server_name"),
            path,
        )
    return devices


def _file(table: dict[str, str], key: str, devices_file: Path) -> Path | None:
    """A file an entry names; a relative path is relative to the devices file's folder."""
    if key not in table:
        return None
    return devices_file.parent / Path(table[key]).expanduser()


def resolve(
    device: str,
    devices_file: Path | None = None,
    token_file: Path | None = None,
    tls_ca: Path | None = None,
    tls_server_name: str | None = None,
) -> DeviceEntry:
    """A device by name from the devices file, else `device` as HOST:PORT with the given auth."""
    fleet = load_devices(devices_file)
    if device in fleet:
        return fleet[device]
    if ":" not in device:
        near = difflib.get_close_matches(device, list(fleet), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else f"; known: {', '.join(sorted(fleet)) or 'none'}"
        raise FleetError(f"device {device!r} is neither HOST:PORT nor a name in the devices file{hint}")
    return DeviceEntry(device, device, token_file, tls_ca, tls_server_name)
