"""Shared fixtures: a real agent on 127.0.0.1:0 with quick measurement settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from device_agent.config import AgentConfig, MeasurementDefaults
from device_agent.server import Agent
from host.agent_client import AgentClient, AgentTarget

# Quick but real measurement settings. A high interference limit keeps these tests independent
# of what else runs on a CI machine; test_measure.py tests the interference check itself.
QUICK = MeasurementDefaults(
    warmup_runs=3,
    min_runs=10,
    max_runs=2000,
    max_time_s=0.3,
    target_rel_ci=0.05,
    max_attempts=3,
    interference_max_cores=64.0,
    min_window_s=0.0,
)


def quick_config(**overrides: object) -> AgentConfig:
    base = dict(listen="127.0.0.1:0", intra_op_threads=1, profile=QUICK, benchmark=QUICK, shutdown_grace_s=2.0)
    base.update(overrides)
    return AgentConfig(**base)


@pytest.fixture(scope="session")
def agent() -> Iterator[Agent]:
    """One real agent for the whole session (worker start and device probe take seconds)."""
    running = Agent(quick_config()).start()
    yield running
    running.stop(grace_s=1.0)


@pytest.fixture()
def client(agent: Agent) -> Iterator[AgentClient]:
    with AgentClient(AgentTarget(agent.address), timeout_s=60.0) as c:
        yield c


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL started for this test run (initdb in a temp dir, free port)."""
    from tests.pg import PostgresServer

    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql", "grpc"])
def store_url(request, tmp_path) -> Iterator[str]:
    """The same store tests run against both SQL backends and the gRPC front (over SQLite)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lut.sqlite'}"
    elif request.param == "postgresql":
        yield request.getfixturevalue("postgres_server").new_database()
    else:
        from lut_store.grpc_front import LutServer
        from lut_store.sqlstore import SqliteStore

        with SqliteStore(tmp_path / "served.sqlite") as backing:
            server = LutServer(backing).start()
            try:
                yield f"grpc://{server.address}"
            finally:
                server.stop(grace_s=1.0)


@pytest.fixture()
def store(store_url):
    from lut_store.store import open_store

    s = open_store(store_url)
    yield s
    s.close()
