import pytest

from device_agent.config import AgentConfig, ConfigError, load_agent_config
from lut_store.rpc import split_address


def test_toml_then_flags(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\nlisten = "127.0.0.1:7000"\nintra_op_threads = 2\n[profile]\ntarget_rel_ci = 0.01\nmax_time_s = 2\n'
    )
    cfg = load_agent_config(path, {"intra_op_threads": 1, "listen": None})
    assert cfg.listen == "127.0.0.1:7000"
    assert cfg.intra_op_threads == 1
    assert cfg.profile.target_rel_ci == 0.01 and cfg.profile.max_time_s == 2.0
    assert cfg.benchmark.max_time_s == 10.0


@pytest.mark.parametrize(
    "text, message",
    [
        ('[agent]\nlisen = "127.0.0.1:1"\n', "unknown config key 'lisen'; did you mean 'listen'"),
        ("[profil]\nmin_runs = 9\n", r"unknown config section \[profil\].*did you mean \[profile\]"),
        ("[profile]\nmin_runs = 2\n", "min_runs = 2"),
        ('[agent]\nintra_op_threads = "two"\n', "must be of type int"),
        ('[agent]\nexecution_provider = "tpu"\n', "execution_provider = 'tpu'"),
        ("[agent\n", "not valid TOML"),
        ("[agent]\nmax_worker_mib = -1.0\n", r"max_worker_mib = -1.0 must be >= 0 \(0: no limit\)"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, message):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_agent_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_agent_config(tmp_path / "nope.toml")


def test_beyond_loopback_needs_token_and_tls(tmp_path):
    token = tmp_path / "token"
    token.write_text("x" * 32)
    with pytest.raises(ConfigError, match="without a token"):
        AgentConfig(listen="0.0.0.0:50051")
    with pytest.raises(ConfigError, match="without TLS"):
        AgentConfig(listen="0.0.0.0:50051", token_file=token)
    assert AgentConfig(listen="0.0.0.0:50051", token_file=token, insecure=True).insecure
    cert = tmp_path / "c.pem"
    assert AgentConfig(listen="[::]:50051", token_file=token, tls_cert=cert, tls_key=cert).tls_cert == cert
    assert AgentConfig(listen="[::1]:0").listen == "[::1]:0"
    assert AgentConfig(listen="localhost:0").listen == "localhost:0"


@pytest.mark.parametrize("address", ["nocolon", ":80", "host:port", "host:70000"])
def test_bad_addresses(address):
    with pytest.raises(ValueError):
        split_address(address)


def test_shipped_example_config_loads_and_matches_the_defaults():
    from pathlib import Path

    shipped = load_agent_config(Path(__file__).resolve().parent.parent / "deploy" / "agent.toml")
    assert shipped == AgentConfig()


def test_the_shipped_agent_config_loads_with_its_limits():
    from pathlib import Path

    cfg = load_agent_config(Path(__file__).resolve().parents[1] / "deploy" / "agent.toml")
    assert cfg.max_worker_mib == 8192.0 and cfg.max_inputs_mib == 256.0 and cfg.max_queued_jobs == 8
