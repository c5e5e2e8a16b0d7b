"""Callables named by the user: "package.module:attr" or "path/to/file.py:attr" (relative to the
working directory). Models and data sets of one's own are loaded this way."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Files already imported, by (resolved path, modification time): a search builds its model for
# every latency variant, and the file is executed once (again only when it changes).
_FILE_MODULES: dict[tuple[str, int], Any] = {}


def _module_of(name: str, where: str, error: type[Exception], what: str) -> Any:
    if where.endswith(".py") or "/" in where:
        path = Path(where).expanduser()
        if not path.is_file():
            raise error(f"{what} {name!r}: {path} is not a file")
        key = (str(path.resolve()), path.stat().st_mtime_ns)
        if key in _FILE_MODULES:
            return _FILE_MODULES[key]
        module_name = "hadmc_user_" + hashlib.sha256(key[0].encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise error(f"{what} {name!r}: {path} cannot be imported as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's code: whatever it raises is reported
            sys.modules.pop(module_name, None)
            raise error(f"{what} {name!r}: importing {path} failed: {type(exc).__name__}: {exc}") from None
        _FILE_MODULES[key] = module
        return module
    try:
        return importlib.import_module(where)
    except Exception as exc:  # an ImportError, or whatever the user's module raises
        raise error(f"{what} {name!r}: module {where!r} does not import: {type(exc).__name__}: {exc}") from None


def load_factory(name: str, error: type[Exception] = ValueError, what: str = "model") -> Callable[..., Any]:
    """The callable `name` ("module:attr" or "file.py:attr") names; `error` (naming the `what`)
    when it cannot be imported, is missing or is not callable."""
    where, _, attr = name.rpartition(":")
    if not where or not attr:
        raise error(f"{what} {name!r}: write 'package.module:factory' or 'path/to/file.py:factory'")
    factory = getattr(_module_of(name, where, error, what), attr, None)
    if factory is None:
        raise error(f"{what} {name!r}: {where} has no {attr!r}")
    if not callable(factory):
        raise error(f"{what} {name!r}: {attr} is a {type(factory).__name__}, not a callable")
    return factory
