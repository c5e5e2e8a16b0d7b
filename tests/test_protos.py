import filecmp
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_gen_script():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checked_in_stubs_match_the_protos(tmp_path):
    written = _load_gen_script().generate(tmp_path)
    assert {p.name for p in written} >= {"agent_pb2.py", "agent_pb2_grpc.py", "common_pb2.py"}
    stale = [p.name for p in written if not filecmp.cmp(p, ROOT / "protos/hadmc/v1" / p.name, shallow=False)]
    assert not stale, f"stubs out of date, run scripts/gen_protos.py: {stale}"


@pytest.mark.parametrize("proto", sorted((ROOT / "protos/hadmc/v1").glob("*.proto")), ids=lambda p: p.name)
def test_every_field_and_rpc_has_a_comment(proto):
    """Each field, enum value and rpc has a comment on the line before or at the end of its line."""
    lines = proto.read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        s = line.strip()
        code = s.split("//")[0].strip()
        declares = code.startswith("rpc ") or (code.endswith(";") and " = " in code and not code.startswith("option"))
        if declares and "//" not in s and not lines[i - 1].strip().startswith("//"):
            undocumented.append(f"{proto.name}:{i + 1}: {s}")
    assert not undocumented, "\n".join(undocumented)
