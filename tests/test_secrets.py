"""Secrets never leave in clear: store URLs are masked in every message, log, response and file,
and a bearer token is never sent over a cleartext channel to another machine."""

from __future__ import annotations

import json
import stat

import pytest

from device_agent.config import NightlyConfig
from device_agent.server import Agent
from host.agent_client import AgentClient, AgentTarget
from lut_store.grpc_store import GrpcStore
from lut_store.records import UnknownVersion
from lut_store.secrets import CleartextToken, check_token_channel, is_loopback, redact_url
from lut_store.store import open_store
from tests.conftest import quick_config
from tests.test_nightly import GRID, _wait_for_state


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://lut:hunter2@db.example:5432/lut", "postgresql://lut:***@db.example:5432/lut"),
        ("postgresql://lut:p@ss:w/rd@db.example/lut", "postgresql://lut:***@db.example/lut"),  # '@', ':', '/'
        (
            "postgresql://lut@db.example/lut?password=hunter2&sslmode=require",
            "postgresql://lut@db.example/lut?password=***&sslmode=require",
        ),
        ("postgresql:///lut?host=/run/pg&sslpassword=k3y", "postgresql:///lut?host=/run/pg&sslpassword=***"),
        ("host=db.example password=hunter2 dbname=lut", "host=db.example password=*** dbname=lut"),
        ("grpc://lut-host:50061?token=abc", "grpc://lut-host:50061?token=***"),
        ("postgresql://lut@db.example/lut", "postgresql://lut@db.example/lut"),
        ("sqlite:////var/lib/hadmc/lut.sqlite", "sqlite:////var/lib/hadmc/lut.sqlite"),
    ],
)
def test_every_secret_in_a_url_is_masked(url, shown):
    assert redact_url(url) == shown
    assert "hunter2" not in redact_url(url) and "k3y" not in redact_url(url)


def test_loopback_addresses():
    for address in ("127.0.0.1:50051", "localhost:1", "[::1]:50051", "unix:/run/hadmc.sock", "127.8.9.1:2"):
        assert is_loopback(address), address
    for address in ("10.0.0.2:50051", "jetson-1:50051", "[2001:db8::1]:50051", "0.0.0.0:1"):
        assert not is_loopback(address), address


def test_a_token_is_never_sent_in_clear_to_another_machine():
    check_token_channel("127.0.0.1:50051", "t0ken", tls=False)  # loopback: nobody on the path
    check_token_channel("10.0.0.2:50051", "t0ken", tls=True)
    check_token_channel("10.0.0.2:50051", None, tls=False)  # no token, nothing to leak
    with pytest.raises(CleartextToken, match="refusing to send the token to 10.0.0.2:50051 in clear text"):
        AgentClient(AgentTarget("10.0.0.2:50051", token="t0ken"))
    with pytest.raises(CleartextToken, match="jetson-1:50061"):
        GrpcStore("jetson-1:50061", token="t0ken", timeout_s=0.5)


def test_store_errors_show_no_password(postgres_server):
    url = postgres_server.new_database().replace("postgres@", "postgres:hunter2@")  # trust auth ignores it
    with open_store(url) as store:
        with pytest.raises(UnknownVersion) as err:
            store.version(12345)
    assert "hunter2" not in str(err.value) and "postgres:***@" in str(err.value)


def test_the_nightly_run_keeps_the_store_password_out_of_logs_responses_and_its_state_file(
    tmp_path, postgres_server, monkeypatch
):
    from device_agent import nightly as module
    from tests.helpers import LogRecorder

    logs = LogRecorder()  # structlog may cache its loggers: record the module's calls themselves
    monkeypatch.setattr(module, "log", logs)
    url = postgres_server.new_database() + "?password=hunter2"
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    state_file = tmp_path / "nightly.json"
    nightly = NightlyConfig(store=url, grids=[str(grid)], state_file=state_file)
    agent = Agent(quick_config(nightly=nightly)).start()
    try:
        _wait_for_state(state_file)
        with AgentClient(AgentTarget(agent.address)) as client:
            response = client.reprofile("manual")
            again = client.reprofile("again")  # the state file's masked URL still names this store
    finally:
        agent.stop(grace_s=1.0)
    assert response.sealed and again.parent_version_id == response.version_id
    assert "hunter2" not in response.store_url and "password=***" in response.store_url
    assert "hunter2" not in state_file.read_text() and json.loads(state_file.read_text())["store_url"]
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    started = [fields for _, event, fields in logs.entries if event == "nightly.start"]
    assert len(started) == 3 and all(fields["store"].endswith("password=***") for fields in started)
    assert not [entry for entry in logs.entries if "hunter2" in repr(entry)]
