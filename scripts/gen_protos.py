"""Regenerate the Python stubs next to protos/hadmc/v1/*.proto.

Usage: python scripts/gen_protos.py [--out DIR]

The stubs are checked in; tests/test_protos.py fails when they differ from what this script
writes with the pinned grpcio-tools.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = Path("protos/hadmc/v1")


def generate(out_dir: Path) -> list[Path]:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto into out_dir; return them."""
    protos = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / PROTO_DIR).glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{REPO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {protos}")
    return sorted((out_dir / PROTO_DIR).glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT)
    written = generate(parser.parse_args().out)
    print("\n".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
