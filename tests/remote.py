"""A remote device for the tests: a network namespace joined to the host by a veth pair, a real
`hadmc agent serve` inside it with a token and TLS (a CA and a server certificate made here),
and a TCP relay on the host that delays what it forwards, for a link slower than a LAN.

Everything made here is torn down by its `close()`/`delete()`, which the fixtures call also when
a test fails.
"""

from __future__ import annotations

import datetime
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
QUICK_AGENT = (
    "[agent]\nintra_op_threads = 1\n"
    "[profile]\nmin_window_s = 0.0\nmax_time_s = 0.2\ninterference_max_cores = 64.0\n"
    "[benchmark]\nmax_time_s = 0.3\ntarget_rel_ci = 0.05\ninterference_max_cores = 64.0\n"
)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def netns_unavailable() -> str | None:
    """Why this machine cannot make a network namespace for a test, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    probe = f"hadmc-probe-{os.getpid()}"
    try:
        made = _ip("netns", "add", probe, check=False)
    except FileNotFoundError:
        return "the ip command (iproute2) is not installed"
    if made.returncode != 0:
        return f"ip netns add fails here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Pki:
    """A CA and a server certificate for `name` it signed (PEM files)."""

    ca: Path
    cert: Path
    key: Path
    name: str


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_pki(directory: Path, name: str) -> Pki:
    """A CA and a server certificate whose only name is the DNS name `name` (no IP address: a
    client must check it against `tls_server_name`)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key", name)
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(_key_pem(key))
    pki.key.chmod(0o600)
    return pki


class Namespace:
    """A network namespace and a veth pair into it, on a private /30 no route of this host uses."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000:04d}{random.randrange(36**2):03d}"
        self.name = f"hadmc-test-{tag}"
        self.host_link, self.ns_link = f"hv{tag}a", f"hv{tag}b"  # at most 15 characters
        self.host_ip, self.ns_ip = self._free_subnet()

    @staticmethod
    def _free_subnet() -> tuple[str, str]:
        used = _ip("-4", "route", "show", "table", "all").stdout + _ip("-4", "addr").stdout
        for _ in range(100):
            base = f"10.{random.randrange(200, 255)}.{random.randrange(256)}.{4 * random.randrange(64)}"
            prefix = base.rsplit(".", 1)[0] + "."
            if prefix not in used:
                last = int(base.rsplit(".", 1)[1])
                return prefix + str(last + 1), prefix + str(last + 2)
        raise RuntimeError("no free private /30 found for the test namespace")

    def create(self) -> Namespace:
        _ip("netns", "add", self.name)
        _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.ns_link)
        _ip("link", "set", self.ns_link, "netns", self.name)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_link)
        _ip("link", "set", self.host_link, "up")
        for args in (("addr", "add", f"{self.ns_ip}/30", "dev", self.ns_link), ("link", "set", self.ns_link, "up")):
            _ip("netns", "exec", self.name, "ip", *args)
        _ip("netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        return self

    def delete(self) -> None:
        """Delete the namespace (its end of the pair goes with it) and the host's end if left."""
        _ip("netns", "del", self.name, check=False)
        _ip("link", "del", self.host_link, check=False)

    def netem(self, delay_ms: int, loss_pct: float) -> bool:
        """Shape both directions of the pair with tc netem; False when the kernel has no netem."""
        spec = ("root", "netem", "delay", f"{delay_ms}ms", "loss", f"{loss_pct}%")
        host = subprocess.run(["tc", "qdisc", "add", "dev", self.host_link, *spec], capture_output=True, check=False)
        if host.returncode != 0:
            return False
        subprocess.run(["ip", "netns", "exec", self.name, "tc", "qdisc", "add", "dev", self.ns_link, *spec], check=True)
        return True

    def unshape(self) -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", self.host_link, "root"], capture_output=True, check=False)
        subprocess.run(
            ["ip", "netns", "exec", self.name, "tc", "qdisc", "del", "dev", self.ns_link, "root"],
            capture_output=True,
            check=False,
        )


class AgentProcess:
    """`hadmc agent serve` inside a namespace, listening on its veth address with token and TLS."""

    def __init__(self, ns: Namespace, directory: Path, token_file: Path, pki: Pki, home: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        config, self.ready = directory / "agent.toml", directory / "ready"
        config.write_text(QUICK_AGENT)
        self.ready.unlink(missing_ok=True)
        hadmc = Path(sys.executable).parent / "hadmc"
        argv = [
            *(["ip", "netns", "exec", ns.name]),
            *([str(hadmc)] if hadmc.exists() else [sys.executable, "-m", "host.cli"]),
            *("agent", "serve", "--listen", f"{ns.ns_ip}:0", "--config", str(config)),
            *("--token-file", str(token_file), "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)),
            *("--ready-file", str(self.ready)),
        ]
        self.log = directory / "agent.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdout=log,
                stderr=log,
                env={**os.environ, "HADMC_HOME": str(home)},
                start_new_session=True,
            )
        self.address = self._wait_ready()

    def _wait_ready(self, timeout_s: float = 90.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready.exists() and self.ready.read_text().strip():
                return self.ready.read_text().strip()
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"agent did not become ready: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL the agent's process group (the agent and its measurement worker)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)


class DelayRelay:
    """A TCP relay from 127.0.0.1 to `target` that delivers each chunk it reads `delay_s` after
    reading it, in order, in both directions (a slow link's latency; no loss: under TCP a lost
    segment is a retransmission, i.e. more delay). `down()` resets every connection and refuses
    new ones until `up()`: the link dropped."""

    def __init__(self, target: str, delay_s: float) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.delay_s = delay_s
        self.chunks = 0  # chunks forwarded, both directions
        self._down = threading.Event()
        self._closed = threading.Event()
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            if self._down.is_set():
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._socks |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                pending: queue.Queue = queue.Queue()
                threading.Thread(target=self._read, args=(src, pending), daemon=True).start()
                threading.Thread(target=self._write, args=(dst, pending), daemon=True).start()

    def _read(self, src: socket.socket, pending: queue.Queue) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            pending.put((time.monotonic() + self.delay_s, data))
            if not data:
                return

    def _write(self, dst: socket.socket, pending: queue.Queue) -> None:
        while True:
            due, data = pending.get()
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                dst.sendall(data)
            except OSError:
                return
            self.chunks += 1

    def down(self) -> None:
        self._down.set()
        with self._lock:
            socks, self._socks = self._socks, set()
        for s in socks:
            _reset(s)

    def up(self) -> None:
        self._down.clear()

    def close(self) -> None:
        self._closed.set()
        self.down()
        self._listener.close()


def _reset(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
