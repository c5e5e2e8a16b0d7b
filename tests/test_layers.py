"""The dependency floors: protos < lut_store < device_agent < host (a package imports only
those below it), host reaches device_agent only through its embedded agent, no import cycles,
functions of a readable size, and an agent that installs and runs without the training stack."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "protos": {"lut_store", "device_agent", "host", "torch"},
    "lut_store": {"device_agent", "host", "torch", "onnx", "onnxruntime", "numpy"},
    "device_agent": {"host", "torch", "torch_pruning"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


# Splitting an ONNX model into kernel keys needs onnx: the one module of lut_store allowed it
# (host and agent share it so their keys cannot drift; both install onnx anyway).
ALLOWED = {"lut_store/keys/graph.py": {"onnx", "numpy"}}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_floors_do_not_import_upper_ones(package):
    bad = {}
    for path in (ROOT / package).rglob("*.py"):
        hits = _imports(path) & FORBIDDEN[package] - ALLOWED.get(str(path.relative_to(ROOT)), set())
        if hits:
            bad[str(path.relative_to(ROOT))] = sorted(hits)
    assert not bad


def test_host_imports_device_agent_only_in_its_embedded_agent():
    """Everything else on the host talks to agents over gRPC, so the two can change apart;
    module-level and function-level imports alike."""
    importers = sorted(
        str(path.relative_to(ROOT)) for path in (ROOT / "host").rglob("*.py") if "device_agent" in _imports(path)
    )
    assert importers == ["host/embedded.py"]


PACKAGES = ("protos", "lut_store", "device_agent", "host")


def _modules() -> dict[str, Path]:
    """Every project module by dotted name (a package by its own name)."""
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    return modules


def _project_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports, at module level or inside functions; imports under
    `if TYPE_CHECKING:` are for annotations only and do not count."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    named = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            named.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            named.add(node.module)
            named.update(f"{node.module}.{a.name}" for a in node.names)  # a submodule imported by name
    found = set()
    for name in named:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return groups


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles():
    """A lazy import that closes a cycle is still a cycle: it only moves the failure to run time."""
    modules = _modules()
    graph = {name: _project_imports(path, modules) - {name} for name, path in modules.items()}
    assert _cycles(graph) == []


def test_functions_stay_readable():
    """ruff caps complexity, arguments and statements (pyproject.toml); lines are capped here."""
    long = []
    for package in (*PACKAGES, "bench", "tests"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue  # generated
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert long == []


def test_agent_commands_do_not_load_torch():
    code = (
        "import sys; from host import cli; cli.build_parser(); import host.agent_client, host.embedded, "
        "device_agent.server, device_agent.worker; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'onnxruntime')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    # The daemon process stays light: onnxruntime and numpy live in the measurement worker.
    assert out.stdout.strip() == "[]"


def test_agent_installs_and_runs_without_the_training_stack(tmp_path):
    """pip install . (no extras) into a fresh venv: no torch, and `hadmc agent` works."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    source = tmp_path / "src"  # pip builds in the source tree: never in the working directory
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", "runs")
    )
    subprocess.run([py, "-m", "pip", "install", "-q", str(source)], check=True, timeout=900)
    probe = subprocess.run(
        [py, "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "True"
    ready = tmp_path / "ready"
    agent = subprocess.Popen(
        [env_dir / "bin" / "hadmc", "agent", "serve", "--listen", "127.0.0.1:0", "--ready-file", str(ready)],
        cwd=tmp_path,
    )
    try:
        for _ in range(600):
            if ready.exists() or agent.poll() is not None:
                break
            subprocess.run(["sleep", "0.1"])
        info = subprocess.run(
            [env_dir / "bin" / "hadmc", "agent", "info", "--device", ready.read_text().strip(), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert info.returncode == 0, info.stderr
        assert '"execution_provider": "CPUExecutionProvider"' in info.stdout
    finally:
        agent.terminate()
        agent.wait(30)
