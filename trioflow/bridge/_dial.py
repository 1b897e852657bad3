"""Where the bridge client connects (its URL) and what a failed connection amounts to."""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any

import attrs
import trio

from .._groups import leaves as exception_leaves
from ._subscription import BridgeAuthError, BridgeConnectionError
from ._wsclient import HandshakeRefused, WebSocketClosed

logger = logging.getLogger("trioflow.bridge")


@attrs.frozen
class Target:
    host: str
    port: int
    resource: str
    host_header: str
    ssl: bool


def parse_url(url: str) -> Target:
    """Where ``url`` points. ValueError naming the URL when it is not a ``ws://`` or
    ``wss://`` URL with a host and a valid port."""
    try:
        parts = urllib.parse.urlsplit(url)
        hostname = parts.hostname
        given_port = parts.port
    except ValueError as exc:
        # urllib's own words ("Invalid IPv6 URL", "Port out of range 0-65535") do not
        # say which URL or which option.
        raise ValueError(f"the bridge URL is malformed ({exc}): {url!r}") from None
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"the bridge URL must start with ws:// or wss://, got {url!r}")
    if not hostname:
        raise ValueError(f"the bridge URL has no host: {url!r}")
    secure = parts.scheme == "wss"
    default = 443 if secure else 80
    port = given_port or default
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    host = hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    return Target(host, port, resource, host_header, secure)


def _closed_error(reason: Any) -> BridgeConnectionError:
    detail = f": {reason.reason}" if reason.reason else ""
    return BridgeConnectionError(
        f"the connection closed ({reason.code} {reason.name}{detail})", close_code=reason.code
    )


def connection_error(exc: BaseException, closed: Any = None) -> BridgeConnectionError:
    """The BridgeConnectionError a failed or dropped connection amounts to (``closed``:
    the websocket's close reason, when it had one)."""
    leaves = exception_leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, BridgeConnectionError):
            return leaf
        if isinstance(leaf, HandshakeRefused):
            if leaf.status_code == 401:
                return BridgeAuthError("the server refused the token (HTTP 401)")
            return BridgeConnectionError(
                f"the server refused the connection (HTTP {leaf.status_code})"
            )
    if closed is not None:
        # E.g. the reader closing with 1009 for a message over max_message_size.
        return _closed_error(closed)
    for leaf in leaves:
        if isinstance(leaf, WebSocketClosed):
            return _closed_error(leaf.reason)
        if isinstance(leaf, OSError | trio.BrokenResourceError | trio.TooSlowError):
            return BridgeConnectionError(f"cannot connect: {leaf!r}")
    logger.error("trioflow bridge client: connection failed", exc_info=exc)
    return BridgeConnectionError(f"connection failed: {exc!r}")
