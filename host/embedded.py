"""An agent started inside the host process, on 127.0.0.1, when no device is named."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager

from device_agent.config import AgentConfig
from device_agent.server import Agent
from host.agent_client import AgentTarget


@contextmanager
def embedded_agent(config: AgentConfig | None = None) -> Iterator[AgentTarget]:
    """Start an agent on 127.0.0.1:<free port>; yield where it listens; stop it after."""
    cfg = config or AgentConfig(listen="127.0.0.1:0")
    agent = Agent(cfg).start()
    try:
        yield AgentTarget(agent.address)
    finally:
        agent.stop(grace_s=2.0)


def embedded_agent_with(threads: int) -> contextlib.AbstractContextManager[AgentTarget]:
    """An embedded agent on 127.0.0.1:<free port> with `threads` intra-op threads."""
    return embedded_agent(AgentConfig(listen="127.0.0.1:0", intra_op_threads=threads))
