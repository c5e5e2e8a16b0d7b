"""The agent run by the host process: `hadmc agent serve`, and an agent on 127.0.0.1 when no
device is named. The one host module that imports device_agent, so that everything else on the
host talks to agents over gRPC only."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from device_agent.config import AgentConfig, load_agent_config
from device_agent.server import Agent, serve
from host.agent_client import AgentTarget


def serve_agent(config_file: Path | None, overrides: Mapping[str, Any], ready_file: Path | None) -> int:
    """Serve the agent `config_file` describes (None: the defaults), flags in `overrides` taking
    precedence, until SIGTERM; the exit status."""
    return serve(load_agent_config(config_file, overrides), ready_file)


@contextmanager
def embedded_agent(config: AgentConfig | None = None) -> Iterator[AgentTarget]:
    """Start an agent on 127.0.0.1:<free port>; yield where it listens; stop it after."""
    cfg = config or AgentConfig(listen="127.0.0.1:0")
    agent = Agent(cfg).start()
    try:
        yield AgentTarget(agent.address)
    finally:
        agent.stop(grace_s=2.0)


def embedded_agent_with(
    config_file: Path | None = None, intra_op_threads: int | None = None, runtime: str | None = None
) -> AbstractContextManager[AgentTarget]:
    """An embedded agent from plain arguments: an agent TOML file (None: the defaults), the
    intra-op thread count (None: the file's; 0: the physical cores) and the runtime (None: the
    file's)."""
    overrides = {"listen": "127.0.0.1:0", "intra_op_threads": intra_op_threads, "runtime": runtime}
    return embedded_agent(load_agent_config(config_file, overrides))
