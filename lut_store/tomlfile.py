"""TOML files: one reader whose errors name the file, for every config-like file hadmc reads."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def read_toml(path: Path, what: str, error: type[Exception] = ValueError) -> dict[str, Any]:
    """Parse `path`; raise `error` naming `what` and the file when unreadable or invalid."""
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {path} is not valid TOML: {exc}") from None
