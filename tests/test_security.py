"""Token auth and TLS against a real agent."""

from __future__ import annotations

import datetime
import ipaddress

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device_agent.server import Agent
from host.agent_client import AgentClient, AgentError, AgentTarget
from lut_store.keys import ops
from tests.conftest import quick_config

TOKEN = "s3cret-token-0123456789abcdef"


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hadmc-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    cert, key = _self_signed(tmp)
    agent = Agent(quick_config(token_file=token_file, tls_cert=cert, tls_key=key)).start()
    yield agent, cert.read_bytes()
    agent.stop(grace_s=1.0)


@pytest.fixture(scope="module")
def token_only(tmp_path_factory):
    token_file = tmp_path_factory.mktemp("tok") / "token"
    token_file.write_text(TOKEN)
    agent = Agent(quick_config(token_file=token_file)).start()
    yield agent
    agent.stop(grace_s=1.0)


@pytest.mark.parametrize(
    "token, message", [(None, "missing 'authorization"), ("wrong-token-wrong-token", "invalid token")]
)
def test_missing_or_wrong_token_is_unauthenticated(token_only, token, message):
    with AgentClient(AgentTarget(token_only.address, token=token)) as client:
        for call in (
            client.info,
            lambda: list(client.profile([ops.elementwise("Relu", (1, 4))])),
            lambda: client.benchmark(b"x" * 10),
        ):
            with pytest.raises(AgentError, match=message) as exc:
                call()
            assert exc.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert client.health() == "SERVING"  # health stays open for probes


def test_right_token_is_served(token_only):
    with AgentClient(AgentTarget(token_only.address, token=TOKEN)) as client:
        assert client.info().fingerprint_hash
        (r,) = client.profile([ops.elementwise("Relu", (1, 4))])
        assert r.WhichOneof("outcome") == "stats"


def test_tls_with_token(secured):
    agent, ca = secured
    with AgentClient(AgentTarget(agent.address, token=TOKEN, tls_ca=ca)) as client:
        assert client.info().fingerprint_hash
    with AgentClient(AgentTarget(agent.address, token="nope-nope-nope-nope", tls_ca=ca)) as client:
        with pytest.raises(AgentError) as exc:
            client.info()
        assert exc.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_plaintext_client_cannot_talk_to_a_tls_agent(secured):
    agent, _ = secured
    with AgentClient(AgentTarget(agent.address, token=TOKEN), timeout_s=3, retries=1) as client:
        with pytest.raises(AgentError) as exc:
            client.info()
        assert exc.value.code == grpc.StatusCode.UNAVAILABLE


def test_untrusted_certificate_is_refused(secured, tmp_path):
    agent, _ = secured
    other_ca, _ = _self_signed(tmp_path)
    with AgentClient(
        AgentTarget(agent.address, token=TOKEN, tls_ca=other_ca.read_bytes()), timeout_s=3, retries=1
    ) as client:
        with pytest.raises(AgentError) as exc:
            client.info()
        assert exc.value.code == grpc.StatusCode.UNAVAILABLE


def test_short_token_file_is_refused(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("short")
    with pytest.raises(ValueError, match="shorter than 16"):
        Agent(quick_config(token_file=token_file)).start()
