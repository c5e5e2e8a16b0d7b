"""Secrets never leave in clear: one redaction for every URL that reaches a log, a message, a
response or a file, and the rule that a bearer token travels only over TLS or loopback."""

from __future__ import annotations

import ipaddress
import re

MASK = "***"
# Query or keyword parameters that carry a secret (libpq's `password` and `sslpassword`, tokens).
_SECRET_PARAMS = re.compile(r"(?i)\b(password|sslpassword|passwd|pwd|token|secret|api_key)=([^&\s]*)")


def redact_url(url: str) -> str:
    """`url` with every secret masked: the password of `scheme://user:password@host/...` (a
    password may hold '@', ':' or '/'), and `password=`, `token=`, ... in a query string or a
    libpq keyword string. Anything else is left as it is."""
    text = _SECRET_PARAMS.sub(lambda m: f"{m.group(1)}={MASK}", url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    query = rest.find("?")
    authority_end = len(rest) if query < 0 else query
    at = rest.rfind("@", 0, authority_end)  # the host follows the last '@': a password may hold one
    if at < 0:
        return text
    user, colon, _password = rest[:at].partition(":")
    if not colon:
        return text
    return f"{scheme}://{user}:{MASK}{rest[at:]}"


def is_loopback(address: str) -> bool:
    """Whether `address` (HOST:PORT, [V6]:PORT, localhost, unix:PATH) stays on this machine."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 or address.startswith("[") else address
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CleartextToken(ValueError):
    """A bearer token would cross the network unencrypted."""


def check_token_channel(address: str, token: str | None, tls: bool) -> None:
    """Refuse to send `token` to a non-loopback `address` without TLS: anyone on the path would
    read it and could then call the agent or store as you."""
    if token and not tls and not is_loopback(address):
        raise CleartextToken(
            f"refusing to send the token to {address} in clear text: give the server's TLS CA "
            "(tls_ca / --tls-ca, or the devices file's tls_ca), or reach it over loopback (an SSH tunnel)"
        )
