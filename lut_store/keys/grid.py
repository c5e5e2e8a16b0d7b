"""Op keys from a grid file: every combination of the listed parameters.

```toml
precisions = ["fp32", "int8"]        # optional; default: the precisions the device runs

[[conv]]                             # one table per sweep; every value may be a list
batch = 1
in_channels = [16, 32]
out_channels = "same"                # or a list; "same" = in_channels
size = [8, 16]                       # square input, height = width
kernel = [1, 3]
stride = [1, 2]
groups = 1
fuse = [[], ["relu"], ["add", "relu"]]

[[gemm]]
batch = 1
in_features = 512
out_features = [6, 10]
```

Tables: conv, gemm, matmul (a_shape, b_shape), pool (kind, batch, channels, size, kernel,
stride, padding), global_avg_pool (batch, channels, size), elementwise (op, shape),
batch_norm (batch, channels, size), concat (shapes, axis), softmax (shape, axis).
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lut_store.keys import ops
from lut_store.keys.ops import NCHW, ConvSpec
from lut_store.opkey import OpKey, OpKeyError
from lut_store.precision import Precision
from lut_store.tomlfile import read_toml


class GridError(ValueError):
    """A grid file that cannot be expanded; the message names the table and field."""


@dataclass(frozen=True)
class _ConvRow:
    """One [[conv]] combination: a square input of `size`; out_channels "same" is in_channels."""

    batch: int
    in_channels: int
    size: int
    kernel: int
    out_channels: Any = "same"
    stride: int = 1
    padding: int | None = None
    dilation: int = 1
    groups: int = 1
    bias: bool = True
    fuse: Sequence[str] = ()

    def key(self, precision: str) -> OpKey:
        out = self.in_channels if self.out_channels == "same" else self.out_channels
        spec = ConvSpec(out, self.kernel, self.stride, self.padding, self.dilation, self.groups, self.bias)
        return ops.conv(NCHW(self.batch, self.in_channels, self.size, self.size), spec, tuple(self.fuse), precision)


def _pool(
    kind: str,
    batch: int,
    channels: int,
    size: int,
    kernel: int,
    precision: str,
    stride: int | None = None,
    padding: int = 0,
) -> OpKey:
    return ops.pool(kind, NCHW(batch, channels, size, size), kernel, stride, padding, precision)


_BUILDERS: dict[str, Callable[..., OpKey]] = {
    "conv": lambda precision, **row: _ConvRow(**row).key(precision),
    "gemm": lambda precision, **kw: ops.gemm(precision=precision, **kw),
    "matmul": lambda precision, **kw: ops.matmul(precision=precision, **kw),
    "pool": _pool,
    "global_avg_pool": lambda batch, channels, size, precision: ops.global_avg_pool(
        NCHW(batch, channels, size, size), precision
    ),
    "elementwise": lambda op, shape, precision: ops.elementwise(op, shape, precision),
    "batch_norm": lambda batch, channels, size, precision: ops.batch_norm(NCHW(batch, channels, size, size), precision),
    "concat": lambda shapes, precision, axis=1: ops.concat(shapes, axis, precision),
    "softmax": lambda shape, precision, axis=-1: ops.softmax(shape, axis, precision),
}
# Fields whose single value is itself a list (a shape, a fuse chain): a list of them is a sweep.
_LIST_VALUED = {"fuse": 1, "shape": 1, "a_shape": 1, "b_shape": 1, "shapes": 2}


def _sweep(name: str, value: Any) -> list[Any]:
    depth = _LIST_VALUED.get(name, 0)

    def nesting(v: Any) -> int:
        return 1 + nesting(v[0]) if isinstance(v, list) and v else (1 if isinstance(v, list) else 0)

    return value if nesting(value) > depth else [value]


def expand_grid(doc: dict[str, Any], device_precisions: Sequence[str]) -> list[OpKey]:
    """All keys a parsed grid describes, deduplicated, in file order."""
    precisions = doc.get("precisions", list(device_precisions))
    allowed = [p.value for p in Precision]
    if not isinstance(precisions, list):
        raise GridError(f'precisions = {precisions!r}: give a list, e.g. ["fp32", "int8"]')
    bad = [p for p in precisions if p not in allowed]
    if bad:
        raise GridError(f"unknown precisions {bad}; allowed: {allowed}")
    keys: dict[str, OpKey] = {}
    for table, sweeps in doc.items():
        if table == "precisions":
            continue
        if table not in _BUILDERS:
            near = difflib.get_close_matches(table, list(_BUILDERS), n=1)
            raise GridError(
                f"unknown grid table [[{table}]]"
                + (f"; did you mean [[{near[0]}]]?" if near else f"; known: {', '.join(_BUILDERS)}")
            )
        for index, sweep in enumerate(sweeps if isinstance(sweeps, list) else [sweeps]):
            if not isinstance(sweep, dict):
                raise GridError(f"[[{table}]] #{index + 1} is {sweep!r}: each entry is a table of parameters")
            names = list(sweep)
            values = [_sweep(n, sweep[n]) for n in names]
            for combo in itertools.product(*values, precisions):
                params = dict(zip(names, combo[:-1], strict=False))
                try:
                    key = _BUILDERS[table](precision=combo[-1], **params)
                except (TypeError, ValueError, ArithmeticError) as exc:  # a missing or impossible parameter
                    raise GridError(f"[[{table}]] #{index + 1} {params}: {type(exc).__name__}: {exc}") from None
                except OpKeyError as exc:
                    raise GridError(f"[[{table}]] #{index + 1} {params}: {exc}") from None
                keys.setdefault(key.hash, key)
    if not keys:
        raise GridError("the grid describes no keys")
    return list(keys.values())


def load_grid(path: Path, device_precisions: Sequence[str]) -> list[OpKey]:
    return expand_grid(read_toml(path, "grid", GridError), device_precisions)
