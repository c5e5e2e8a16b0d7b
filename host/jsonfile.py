"""Run files: JSON written atomically, so a killed run never leaves half a file that a resume
would take for a finished step. Keys keep their order (a policy's layers in execution order)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)
