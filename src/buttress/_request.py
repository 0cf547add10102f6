"""The request record: what buttress learns about one request, computed once, read by every layer.

The outermost layer (``RequestContextMiddleware``) makes one ``RequestRecord`` per HTTP or
WebSocket request and keeps it in ``scope[RECORD_KEY]``. Inner layers read it instead of
re-parsing the scope, so a fix to how the path, the client or the final status is decided
lands here, once. Every scope key buttress defines is in this module.

# Strategy: the path as the app sees it. ASGI servers put a ``--root-path`` prefix in
# ``scope["root_path"]`` and (since the 2023 spec clarification) also at the start of
# ``scope["path"]``. Everything that compares paths (the metrics endpoint, exclusions,
# rate-limit patterns, Sentry's URL) compares ``RequestRecord.path``, which never has it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterable, Sequence
from typing import Final

from buttress._asgi import Headers, Message, Receive, Scope, Send
from buttress.config import IPNetwork

__all__ = [
    "EXCEPTION_KEY",
    "RATELIMIT_KEY",
    "RECORD_KEY",
    "REQUEST_BODY_KEY",
    "ROUTE_KEY",
    "RecordingResponder",
    "RequestRecord",
    "app_path",
    "client_ip",
    "record_of",
]

#: The per-request record, made by the outermost buttress layer.
RECORD_KEY: Final = "buttress.request"
#: The route template a framework adapter recorded (Django, Quart): wins over the rest.
ROUTE_KEY: Final = "buttress.route"
#: An exception a framework caught and turned into its own error page (see ``adapters``).
EXCEPTION_KEY: Final = "buttress.exception"
#: The rate limiter of the stack, for route-level limits (``buttress.fastapi.rate_limit``).
RATELIMIT_KEY: Final = "buttress.ratelimit"
#: The JSON request body kept for Sentry (``BUTTRESS_SENTRY_REQUEST_BODIES``), as bytes.
REQUEST_BODY_KEY: Final = "buttress.request_body"

#: The status of a request whose client went away before any answer (nginx's 499).
CANCELLED_STATUS: Final = 499

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RequestRecord:
    """The facts of one request that more than one layer needs.

    Set when the request arrives: ``request_id``, ``client_ip`` (after trusted proxies),
    ``root_path``, ``path`` (without the root path), ``method``, ``trace_id`` and
    ``span_id``. Filled while it is served: ``route`` (the template, once resolved),
    ``status`` (what the client got), ``sent`` (body bytes), ``end`` (when the last body
    byte was handed to the server), ``disconnected`` (the client went away).
    """

    __slots__ = (
        "client_ip",
        "disconnected",
        "end",
        "extra_headers",
        "method",
        "path",
        "received",
        "request_id",
        "response_headers",
        "root_path",
        "route",
        "route_resolved",
        "sent",
        "span_id",
        "start",
        "status",
        "trace_flags",
        "trace_id",
    )

    def __init__(
        self,
        request_id: str,
        client_ip: str | None,
        root_path: str,
        path: str = "",
        method: str = "GET",
    ) -> None:
        self.request_id = request_id
        self.client_ip = client_ip
        self.root_path = root_path
        self.path = path
        self.method = method
        self.trace_id: str | None = None
        self.span_id: str | None = None
        self.trace_flags: str | None = None
        self.route: str | None = None
        self.route_resolved = False
        self.status = 0
        self.sent = 0
        self.received = 0  # request body bytes the app read (for http_request_size_bytes)
        self.response_headers: list[tuple[bytes, bytes]] | None = None
        # Headers an inner layer adds to the response (the rate limiter's), appended by the
        # one responder that already rewrites the response start: no send wrapper of its own.
        self.extra_headers: list[tuple[bytes, bytes]] | None = None
        self.start = time.perf_counter()
        self.end = 0.0
        self.disconnected = False

    @classmethod
    def for_scope(cls, scope: Scope, request_id: str = "", ip: str | None = None) -> RequestRecord:
        """A record for ``scope`` (what a layer used alone makes for itself)."""
        root = scope.get("root_path", "")
        return cls(request_id, ip, root, app_path(scope), scope.get("method", "GET"))

    def final_status(self, error: BaseException | None = None) -> int:
        """The status the client got, decided once for every layer.

        The response's own status when one started; otherwise 499 when the client went
        away (the task was cancelled, or a disconnect was received), else 500, which is
        what the server answers for an app that ended without a response.
        """
        if not self.status:
            gone = self.disconnected or isinstance(error, asyncio.CancelledError)
            self.status = CANCELLED_STATUS if gone else 500
        return self.status

    def duration(self) -> float:
        """Seconds from arrival to the last body byte (or to now, if none was sent)."""
        return (self.end or time.perf_counter()) - self.start


class RecordingResponder:
    """One request's ``send`` and ``receive``, writing what they see on its record.

    Records the status the client got (499 when the response start could not be sent
    because the client left), the response headers, the body bytes both ways, when the last
    body byte went out (so a background task after the response does not count as the
    request's duration) and whether the client disconnected. With ``id_header``, that
    header replaces any of the same name the app set (the request id on every response).
    """

    __slots__ = ("_id_header", "_receive", "_send", "record")

    def __init__(
        self,
        record: RequestRecord,
        send: Send,
        receive: Receive,
        id_header: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.record = record
        self._send = send
        self._receive = receive
        self._id_header = id_header

    async def send(self, message: Message) -> None:
        kind = message["type"]
        record = self.record
        if kind == "http.response.body":
            record.sent += len(message.get("body", b""))
            if not message.get("more_body", False):
                record.end = time.perf_counter()
        elif kind == "http.response.start":
            record.status = message["status"]
            if self._id_header is not None:
                message["headers"] = _with_header(
                    message.get("headers"), self._id_header, record.extra_headers
                )
            record.response_headers = message.get("headers")
            try:
                await self._send(message)
            except OSError:
                record.status = CANCELLED_STATUS  # the client left before the answer started
                raise
            return
        await self._send(message)

    async def receive(self) -> Message:
        message = await self._receive()
        kind = message["type"]
        if kind == "http.request":
            self.record.received += len(message.get("body", b""))
        elif kind == "http.disconnect":
            self.record.disconnected = True
        return message


def _with_header(
    headers: Headers | None, header: tuple[bytes, bytes], extra: Headers | None = None
) -> Headers:
    """The response headers with ours in place of any the app set itself, plus ``extra``."""
    name = header[0]
    # ASGI asks for lower-case names, but an app that set its own id with any case must not
    # keep a second one next to ours.
    out = [h for h in headers or () if h[0].lower() != name]
    if extra:
        out += extra
    out.append(header)
    return out


def record_of(scope: Scope) -> RequestRecord | None:
    """The record of the request in ``scope``, when a buttress context layer made one."""
    record: RequestRecord | None = scope.get(RECORD_KEY)
    return record


def app_path(scope: Scope) -> str:
    """``scope["path"]`` without the root path: the path the app routes on."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


# --- client IP --------------------------------------------------------------------------


def _parse_ip(text: str) -> IPAddress | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # Forwarded: for="[2001:db8::1]:4711"
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:10.0.0.1 is the IPv4 peer 10.0.0.1
    return ip


def _hops(headers: Iterable[tuple[bytes, bytes]], header: str) -> list[str]:
    """The client addresses recorded in the one configured forwarding header, nearest last."""
    name = header.encode("latin-1")
    hops: list[str] = []
    for key, value in headers:
        if key.lower() != name:
            continue
        text = value.decode("latin-1")
        if header == "x-forwarded-for":
            hops.extend(text.split(","))
        elif header == "forwarded":
            for element in text.split(","):
                for pair in element.split(";"):
                    k, _, v = pair.strip().partition("=")
                    if k.strip().lower() == "for":
                        hops.append(v)
        else:  # x-real-ip: one address, set (not appended) by the nearest proxy
            hops = [text]
    return hops


def _trusted(ip: IPAddress, nets: Sequence[IPNetwork]) -> bool:
    return any(ip in net for net in nets)


def client_ip(
    scope: Scope, trusted: Sequence[IPNetwork] = (), header: str = "x-forwarded-for"
) -> str | None:
    """The client's IP: the socket peer, or what trusted proxies say it was.

    Only ``header`` (``x-forwarded-for``, ``forwarded`` or ``x-real-ip``) is read, and only
    when the peer is in ``trusted``: a proxy passes other forwarding headers through from
    the client untouched, so believing "whichever is present" lets a client choose its
    address. The hops are walked right to left, skipping trusted proxies; the first
    untrusted address is the client. A malformed hop stops the walk at the last address
    that could be trusted. Addresses come back in one spelling (``::ffff:`` mapped IPv4 as
    IPv4, IPv6 compressed), so one client is one key.
    """
    client = scope.get("client")
    peer: str | None = client[0] if client else None
    if peer is None:
        return None
    if not trusted:  # the common case: no address parsing on the request path
        if peer.startswith("::ffff:") and "." in peer:
            return peer[7:]  # a dual-stack socket's IPv4 peer, in its IPv4 spelling
        return peer
    peer_ip = _parse_ip(peer)
    if peer_ip is None:
        return peer  # a unix socket path or similar: not an address to walk from
    if not _trusted(peer_ip, trusted):
        return str(peer_ip)
    current: IPAddress = peer_ip
    for hop in reversed(_hops(scope.get("headers") or (), header)):
        ip = _parse_ip(hop)
        if ip is None:
            break
        current = ip
        if not _trusted(ip, trusted):
            break
    return str(current)
