"""Who may open a bridge connection: bearer tokens and ``Origin`` checks (pure, trio-free).

Browsers cannot set an ``Authorization`` header on a websocket, so a token also comes as a
subprotocol: the page offers ``["trioflow.v1", "trioflow.bearer.<token>"]`` and the server
selects ``trioflow.v1``, never the token (the selected subprotocol is echoed in the
response, which proxies and browser tools log). When both a header and a subprotocol token
come, the header counts. Tokens never come from cookies or the query string.

The ``Origin`` check protects against a foreign page that a user's browser opens while it
can reach the server (DNS rebinding, a token left in another tab): a browser always sends
``Origin`` on a websocket upgrade, and a page cannot forge it. Clients that send no
``Origin`` (the Python client, curl, Node) are not browsers and are not affected.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Literal
from urllib.parse import urlsplit

import attrs

#: The subprotocol the server selects (the bridge protocol's name and version).
SUBPROTOCOL: Final = "trioflow.v1"
#: The prefix of a subprotocol that carries a bearer token.
BEARER_PREFIX: Final = "trioflow.bearer."
#: The close code after the handshake when a subprotocol token is wrong (4000-4999 is the
#: private range of RFC 6455; 4401 mirrors HTTP 401 so a page can say "wrong token").
CLOSE_BAD_TOKEN: Final = 4401

Role = Literal["read", "control"]

_LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


@attrs.frozen
class Credentials:
    """What an upgrade request offers: where its token came from, and the subprotocol to
    select (``None``: select none)."""

    token: bytes | None
    #: ``"header"``, ``"subprotocol"`` or ``None`` (no token at all).
    source: Literal["header", "subprotocol"] | None
    subprotocol: str | None
    #: The header was there but not ``Bearer <token>`` (refused with 401).
    malformed_header: bool = False


def header_token(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes | None, bool]:
    """The token of the first ``Authorization: Bearer`` header; (None, True) when that
    header has no token. A header of another scheme is no bearer token and is skipped:
    behind a proxy with HTTP Basic auth a browser re-sends ``Basic ...`` on the upgrade,
    and that must not hide the page's subprotocol token."""
    for name, value in headers:
        if name.lower() != b"authorization":
            continue
        scheme, _, token = value.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            continue
        token = token.strip()
        return (token, False) if token else (None, True)
    return None, False


def offered_credentials(
    headers: Iterable[tuple[bytes, bytes]], proposed_subprotocols: Sequence[str]
) -> Credentials:
    """Parse an upgrade request's token and choose the subprotocol to select.

    The selected subprotocol is ``trioflow.v1`` whenever the client proposed it (a
    browser fails a handshake whose response selects none of the subprotocols it offered,
    so a token-carrying client must also offer ``trioflow.v1``), never the token itself.
    """
    subprotocol = SUBPROTOCOL if SUBPROTOCOL in proposed_subprotocols else None
    header, malformed = header_token(headers)
    if header is not None or malformed:
        return Credentials(header, "header" if header else None, subprotocol, malformed)
    for offered in proposed_subprotocols:
        if offered.startswith(BEARER_PREFIX):
            token = offered[len(BEARER_PREFIX) :]
            return Credentials(token.encode() if token else None, "subprotocol", subprotocol)
    return Credentials(None, None, subprotocol)


def lookup_role(token: bytes | None, tokens: Sequence[tuple[bytes, Role]]) -> Role | None:
    """The role of ``token`` among ``tokens`` (compared in constant time; None: unknown)."""
    if token is None:
        return None
    role: Role | None = None
    for known, known_role in tokens:  # no early exit: the time does not depend on a match
        if hmac.compare_digest(known, token):
            role = known_role
    return role


@attrs.frozen
class Decision:
    """What to do with an upgrade request, after :func:`decide`.

    - ``reject`` set: refuse the upgrade with that HTTP status (403 foreign origin, 401 no
      or bad header token, or no token at all);
    - else accept, selecting ``subprotocol``; ``close_code`` set (4401): close right after
      the handshake (a wrong subprotocol token: a browser can only see close codes);
    - else ``role`` is the connection's role.
    """

    role: Role | None = None
    subprotocol: str | None = None
    reject: int | None = None
    close_code: int | None = None


def decide(
    headers: Iterable[tuple[bytes, bytes]],
    proposed_subprotocols: Sequence[str],
    tokens: Sequence[tuple[bytes, Role]],
    origins: OriginPolicy,
) -> Decision:
    """The whole admission policy of SPEC §5 for one upgrade request."""
    headers = list(headers)
    if not origins.allows(origin_of(headers)):
        return Decision(reject=403)  # before the token is looked at
    creds = offered_credentials(headers, proposed_subprotocols)
    role = lookup_role(creds.token, tokens)
    if creds.source == "subprotocol" and creds.subprotocol is not None:
        if role is None:
            return Decision(subprotocol=creds.subprotocol, close_code=CLOSE_BAD_TOKEN)
        return Decision(role=role, subprotocol=creds.subprotocol)
    if role is None:
        return Decision(reject=401)
    return Decision(role=role, subprotocol=creds.subprotocol)


# --- origins -------------------------------------------------------------------------------


def origin_of(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The request's ``Origin`` header (None when absent). Several ``Origin`` headers
    are read as HTTP combines them, one comma-joined value, which is no origin: checking
    only the first would let a foreign second one through."""
    values = [value for name, value in headers if name.lower() == b"origin"]
    if not values:
        return None
    return b", ".join(values).decode("latin-1").strip()


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, default ports left out (``http`` 80,
    ``https`` 443); ValueError for anything that is not an http(s) origin."""
    parts = urlsplit(origin.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"an origin is 'http(s)://host[:port]', got {origin!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"an origin has no path, query, fragment or user, got {origin!r}")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def viewer_origins(host: str, port: int) -> frozenset[str]:
    """The default ``allowed_origins`` of a server bound to ``host:port``: the viewer's
    own origin as printed (``http://host:port``) plus, on a loopback address, its
    ``localhost``/``127.0.0.1`` twin. A wildcard bind (``0.0.0.0``, ``::``) has no origin
    of its own: only the loopback names are allowed (set ``allowed_origins`` for others).
    """
    origins: set[str] = set()
    bare = host.strip("[]")
    if bare not in ("0.0.0.0", "::", ""):
        shown = f"[{bare}]" if ":" in bare else bare
        origins.add(normalize_origin(f"http://{shown}:{port}"))
    if not origins or _is_loopback(bare):
        twins = ["localhost", "127.0.0.1", *(["[::1]"] if bare == "::1" else [])]
        origins.update(normalize_origin(f"http://{twin}:{port}") for twin in twins)
    return frozenset(origins)


@attrs.frozen
class OriginPolicy:
    """Which ``Origin`` headers may open a connection (``None`` allowed = any)."""

    allowed: frozenset[str] | None

    @classmethod
    def build(
        cls, allowed_origins: Iterable[str] | None, *, host: str, port: int
    ) -> OriginPolicy:
        """``allowed_origins`` as given (``["*"]``: any origin), or the default for a
        server at ``host:port`` (:func:`viewer_origins`). ValueError names a bad entry."""
        if allowed_origins is None:
            return cls(viewer_origins(host, port))
        if isinstance(allowed_origins, str):
            raise TypeError("allowed_origins must be a list of origins, not one str")
        entries = list(allowed_origins)
        if "*" in entries:
            return cls(None)
        return cls(frozenset(normalize_origin(entry) for entry in entries))

    def allows(self, origin: str | None) -> bool:
        if origin is None or self.allowed is None:
            return True  # not a browser (or every origin allowed)
        try:
            return normalize_origin(origin) in self.allowed
        except ValueError:
            return False  # e.g. "null" (a file:// page or a sandboxed frame)


def token_roles(tokens: Mapping[str, Role] | None) -> list[tuple[bytes, Role]]:
    """Check a ``tokens`` mapping (ValueError names what is wrong) as (bytes, role) pairs.

    A token that is not :func:`is_subprotocol_safe` still works in an ``Authorization``
    header, but a browser cannot send it: the server should warn about it.
    """
    checked: list[tuple[bytes, Role]] = []
    for token, role in (tokens or {}).items():
        if not isinstance(token, str) or not token or token.strip() != token:
            raise ValueError("a token must be a non-empty str without surrounding spaces")
        if role not in ("read", "control"):
            raise ValueError(f"token role must be 'read' or 'control', got {role!r}")
        checked.append((token.encode(), role))
    return checked


_TCHAR: Final = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def is_subprotocol_safe(token: str) -> bool:
    """Whether ``token`` fits in a ``Sec-WebSocket-Protocol`` value (an RFC 7230 token)."""
    return bool(token) and all(char in _TCHAR for char in token)
