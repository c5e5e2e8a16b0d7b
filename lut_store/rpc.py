"""gRPC server plumbing shared by the device agent and the LUT store front: the exposure rule
(loopback, else token and TLS), token auth, per-RPC logging, binding."""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import structlog

log = structlog.get_logger(__name__)

_HEALTH_PREFIX = "/grpc.health.v1.Health/"


def split_address(address: str) -> tuple[str, int]:
    """'127.0.0.1:0' -> ('127.0.0.1', 0); '[::1]:50051' -> ('::1', 50051)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"address {address!r} is not HOST:PORT")
    host = host.strip("[]")
    try:
        port_no = int(port)
    except ValueError:
        raise ValueError(f"address {address!r}: port {port!r} is not a number") from None
    if not 0 <= port_no <= 65535:
        raise ValueError(f"address {address!r}: port {port_no} is out of range")
    return host, port_no


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(
    listen: str, token_file: Path | None, tls_cert: Path | None, tls_key: Path | None, insecure: bool
) -> None:
    """Loopback is open; beyond it a token is required, and TLS unless `insecure`."""
    host, _ = split_address(listen)
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("tls_cert and tls_key must be given together")
    if is_loopback(host):
        return
    if token_file is None:
        raise ValueError(
            f"refusing to listen on {listen} beyond loopback without a token: "
            "pass --token-file (and --tls-cert/--tls-key, or --insecure)"
        )
    if tls_cert is None and not insecure:
        raise ValueError(
            f"refusing to listen on {listen} beyond loopback without TLS: "
            "pass --tls-cert and --tls-key, or --insecure to send the token in clear"
        )


def read_token(path: Path) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read token file {path}: {exc.strerror}") from None
    if len(token) < 16:
        raise ValueError(f"token in {path} is shorter than 16 characters; use e.g. `openssl rand -hex 32`")
    return token


MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def make_server(
    workers: int, token: str | None, thread_prefix: str, max_concurrent_rpcs: int | None = None
) -> grpc.Server:
    """A gRPC server with per-RPC logging, token auth when a token is given, 64 MiB messages."""
    from concurrent import futures

    interceptors: list[grpc.ServerInterceptor] = [LoggingInterceptor()]
    if token is not None:
        interceptors.append(TokenAuthInterceptor(token))
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_prefix),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            # Find peers that vanished without closing (a dead host holds its streams otherwise)
            # and drop connections that stay idle; a client may ping at most every 10 s.
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.max_connection_idle_ms", 30 * 60_000),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )


def bind(server: grpc.Server, listen: str, tls_cert: Path | None, tls_key: Path | None) -> int:
    """Add the listening port (TLS when a certificate is given); return the bound port."""
    try:
        if tls_cert is not None and tls_key is not None:
            creds = grpc.ssl_server_credentials([(Path(tls_key).read_bytes(), Path(tls_cert).read_bytes())])
            return server.add_secure_port(listen, creds)
        return server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {listen} (in use, or not an address of this machine): {exc}") from None


def _abort_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that only aborts."""

    def deny(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, details)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, handler.request_deserializer, handler.response_serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, handler.request_deserializer, handler.response_serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, handler.request_deserializer, handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(deny, handler.request_deserializer, handler.response_serializer)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every RPC but the health service."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(_HEALTH_PREFIX):
            return handler
        metadata = dict(details.invocation_metadata or ())
        value = metadata.get("authorization")
        if value is None:
            return _abort_handler(
                handler, grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <token>' metadata"
            )
        scheme, _, token = str(value).partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token):
            return _abort_handler(handler, grpc.StatusCode.UNAUTHENTICATED, "invalid token")
        return handler


class LoggingInterceptor(grpc.ServerInterceptor):
    """Logs every RPC with its duration and status code."""

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method

        def done(context: grpc.ServicerContext, t0: float, exc: BaseException | None) -> None:
            code = context.code() or (grpc.StatusCode.UNKNOWN if exc else grpc.StatusCode.OK)
            if not context.is_active() and code == grpc.StatusCode.OK and exc is None:
                code = grpc.StatusCode.CANCELLED
            fields = {
                "method": method,
                "code": code.name,
                "duration_ms": round((time.perf_counter() - t0) * 1000, 3),
                "peer": context.peer(),
            }
            details = context.details()
            if code != grpc.StatusCode.OK and details:
                fields["details"] = details.decode(errors="replace") if isinstance(details, bytes) else details
            (log.info if code == grpc.StatusCode.OK else log.warning)("rpc", **fields)

        def wrap_unary(fn: Callable) -> Callable:
            def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
                t0, exc = time.perf_counter(), None
                try:
                    return fn(request, context)
                except BaseException as e:
                    exc = e
                    raise
                finally:
                    done(context, t0, exc)

            return wrapped

        def wrap_stream(fn: Callable) -> Callable:
            def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
                t0, exc = time.perf_counter(), None
                try:
                    yield from fn(request, context)
                except BaseException as e:
                    exc = e
                    raise
                finally:
                    done(context, t0, exc)

            return wrapped

        if handler.response_streaming:
            factory = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )
            fn = handler.stream_stream if handler.request_streaming else handler.unary_stream
            return factory(wrap_stream(fn), handler.request_deserializer, handler.response_serializer)
        factory = (
            grpc.stream_unary_rpc_method_handler if handler.request_streaming else grpc.unary_unary_rpc_method_handler
        )
        fn = handler.stream_unary if handler.request_streaming else handler.unary_unary
        return factory(wrap_unary(fn), handler.request_deserializer, handler.response_serializer)
