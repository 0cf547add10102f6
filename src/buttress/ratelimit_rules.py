"""What a rate limit applies to: limits, route patterns matched as the frameworks route, client keys.

# Strategy: match what the router will match. The limiter decides before the app runs,
# so it cannot read the route the framework picks; it matches its patterns against every
# spelling of the path that some framework routes to the same handler (measured for
# Starlette, FastAPI, Litestar, Django and Quart behind uvicorn and hypercorn):
# - repeated slashes collapsed and leading/trailing slashes dropped (Litestar routes
#   ``//a``, ``/a//b`` and ``/a/`` to ``/a``; Quart routes ``//a``; Django patterns end
#   in ``/``), on both the path and the pattern;
# - the root path removed as text, not at a segment boundary (Litestar and Quart route
#   ``/apiauth/login`` under root path ``/api``), and also after its first occurrence
#   (Litestar), and the path left as it is (servers that do not prefix it);
# - an absolute-form target (``http://host/a``, passed through by hypercorn) cut to its path;
# - ``HEAD`` charged as ``GET`` (Starlette, Quart and Django run the GET handler).
# Dot segments, case and percent-encoding are left alone: every framework routes on the
# decoded path and none resolves ``.``/``..`` or folds case. A spelling no framework routes
# is at worst charged to the limit it resembles; a spelling some framework routes is never
# missed (tests/test_attacks.py sends each variant to each framework).
"""

from __future__ import annotations

import hashlib
import inspect
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from buttress._asgi import Scope
from buttress._request import client_ip, record_of
from buttress.config import IPNetwork
from buttress.logs import LogThrottle

if TYPE_CHECKING:
    from limits import RateLimitItem

__all__ = [
    "ClientKeys",
    "Limit",
    "RouteTable",
    "Rule",
    "hash_key",
    "ip_key",
    "parse_limits",
    "path_spellings",
]

_SEGMENT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_]+))?\}")
_SLASHES = re.compile(r"/{2,}")
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/]*")


class Limit:
    """One limit item with its 429 body and header bytes encoded once."""

    __slots__ = ("amount", "body", "detail", "expiry", "item", "length", "n")

    def __init__(self, item: RateLimitItem) -> None:
        self.item = item
        self.detail = f"Rate limit exceeded: {item}. Please slow down."
        self.body = orjson.dumps({"detail": self.detail})
        self.length = str(len(self.body)).encode("ascii")
        self.amount = str(item.amount).encode("ascii")
        self.n: int = item.amount
        self.expiry: int = item.get_expiry()


def parse_limits(spec: str, name: str = "limit") -> tuple[Limit, ...]:
    """``"10/second;1000/hour"`` as limits; ``ValueError`` with a hint when it is not one."""
    from limits import parse_many

    try:
        return tuple(Limit(item) for item in parse_many(spec))
    except ValueError:
        raise ValueError(
            f"{name}={spec!r} is not a rate limit; write it like '100/minute' or "
            "'10/second;1000/hour'."
        ) from None


class Rule:
    """The limits of one route pattern (or of the default), with its log throttle and counter."""

    __slots__ = ("chain", "limits", "name", "plan", "rejections", "throttle")

    def __init__(self, name: str, limits: tuple[Limit, ...], throttle_interval: float) -> None:
        self.name = name
        self.limits = limits
        self.throttle = LogThrottle(throttle_interval)
        self.chain: tuple[Rule, ...] = (self,)
        self.rejections: Any = None
        #: ``memory://``: (rule, limit, counters, table id) for every limit of the chain.
        self.plan: tuple[tuple[Rule, Limit, dict[str, Any], int], ...] = ()

    @property
    def template(self) -> str:
        """The pattern of the rule without its method (``/auth/login``), or ``*``."""
        return self.name.rpartition(" ")[2]


def _canonical(path: str) -> str:
    if "//" in path:
        path = _SLASHES.sub("/", path)
    return "/" + path.strip("/")


def path_spellings(scope: Scope) -> list[str]:
    """Every canonical spelling under which some framework may route this request."""
    path: str = scope.get("path", "")
    if "://" in path:
        absolute = _ABSOLUTE.match(path)
        if absolute is not None:
            path = path[absolute.end() :] or "/"
    root: str = scope.get("root_path", "")
    first = _canonical(path)
    if not root:
        return [first]
    at = path.find(root)  # a prefix, or (Litestar) its first occurrence anywhere
    if at < 0:
        return [first]
    stripped = _canonical(path[at + len(root) :])
    return [first] if stripped == first else [stripped, first]


def _compile(pattern: str) -> re.Pattern[str] | None:
    """A regex for ``pattern`` when it has ``{name}`` segments, else None (an exact path)."""
    if "{" not in pattern:
        return None
    out, pos = [], 0
    for match in _SEGMENT.finditer(pattern):
        out.append(re.escape(pattern[pos : match.start()]))
        out.append(".+" if match.group(2) == "path" else "[^/]+")
        pos = match.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out))


class RouteTable:
    """Route patterns (``METHOD /path/{name}`` or ``/path/{name:path}``) to values."""

    def __init__(self, entries: Iterable[tuple[str, Any]]) -> None:
        self._exact: dict[str, dict[str | None, Any]] = {}
        self._patterns: list[tuple[re.Pattern[str], str | None, Any]] = []
        for key, value in entries:
            method, _, pattern = key.strip().rpartition(" ")
            verb = method.strip().upper() or None
            canonical = _canonical(pattern)
            regex = _compile(canonical)
            if regex is None:
                self._exact.setdefault(canonical, {})[verb] = value
            else:
                self._patterns.append((regex, verb, value))

    def __bool__(self) -> bool:
        return bool(self._exact or self._patterns)

    def match(self, method: str, scope: Scope) -> Any:
        """The value of the first pattern any spelling of the request's path matches."""
        if method == "HEAD":
            method = "GET"
        for path in path_spellings(scope):
            found = self._match(method, path)
            if found is not None:
                return found
        return None

    def _match(self, method: str, path: str) -> Any:
        by_method = self._exact.get(path)
        if by_method is not None:
            found = by_method.get(method) or by_method.get(None)
            if found is not None:
                return found
        for regex, verb, value in self._patterns:
            if (verb is None or verb == method) and regex.fullmatch(path):
                return value
        return None


def ip_key(ip: str | None, ipv6_prefix: int) -> str:
    """The rate-limit key of a client address: IPv4 as is, IPv6 as its ``/prefix`` network.

    One IPv6 client usually holds a whole /64: keyed per address, it would get a fresh
    budget (and a fresh storage key) for every address it picks.
    """
    if ip is None:
        return "unknown"
    if ":" not in ip or ipv6_prefix >= 128:
        return ip
    try:
        return str(ipaddress.IPv6Network(f"{ip}/{ipv6_prefix}", strict=False))
    except ValueError:
        return ip


def hash_key(value: bytes, secret: bytes | None) -> str:
    """The stored form of a client-chosen key (an API key): a keyed digest, never the value.

    API keys are secrets that must not land in a shared storage or a log line, a huge
    header must not become a huge storage key, and with a server-side ``secret`` a weak
    key cannot be recovered from storage by guessing offline.
    """
    digest = hashlib.blake2b(value, digest_size=16, key=secret or b"").hexdigest()
    return "header:" + digest


def key_secret(secret: str | None) -> bytes | None:
    """``secret`` as a blake2b key (at most 64 bytes: longer ones are hashed first)."""
    if not secret:
        return None
    raw = secret.encode("utf-8")
    return raw if len(raw) <= 64 else hashlib.blake2b(raw, digest_size=64).digest()


def rules_from(limits: Mapping[str, str], interval: float) -> list[tuple[str, Rule]]:
    """``{"POST /login": "10/minute"}`` as named rules (their limits parsed once)."""
    return [
        (key.strip(), Rule(key.strip(), parse_limits(spec, f"limits[{key!r}]"), interval))
        for key, spec in limits.items()
    ]


class ClientKeys:
    """Who a request is, for rate limiting: its key, or None when it is on the allow list.

    ``key`` is ``"ip"``, ``"header:<Name>"`` (the header's keyed digest, else the IP) or a
    (sync or async) callable of the scope. IPv6 clients are keyed by ``/ipv6_prefix``.
    Header digests are keyed by ``secret``; without one, a random per-process secret
    serves ``memory://``, and ``shared`` storages keep an unkeyed digest (instances must
    agree on the digest of one API key).
    """

    def __init__(
        self,
        *,
        key: Any,
        allow: Iterable[str],
        secret: str | None,
        shared: bool,
        ipv6_prefix: int,
        trusted_proxies: Sequence[IPNetwork],
        forwarded_header: str,
    ) -> None:
        self._func: Any = None
        self._header: bytes | None = None
        self._async = False
        if isinstance(key, str):
            if key.startswith("header:"):
                self._header = key[7:].strip().lower().encode("latin-1")
        else:
            self._func = key
            call = getattr(key, "__call__", None)  # noqa: B004 (an async __call__ counts too)
            self._async = inspect.iscoroutinefunction(key) or inspect.iscoroutinefunction(call)
        nets: list[IPNetwork] = []
        literal: set[str] = set()
        for entry in allow:
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                literal.add(entry)
        self._allow_nets = tuple(nets)
        self._allow_keys = frozenset(literal)
        raw = key_secret(secret)
        self._secret = raw if raw is not None or shared else os.urandom(32)
        self._prefix = ipv6_prefix
        self._trusted = trusted_proxies
        self._forwarded = forwarded_header
        #: The common case: the client IP is the key and nobody is allowed through.
        self.ip_only = self._header is None and self._func is None and not nets and not literal

    def ip(self, scope: Scope) -> str:
        """The client-IP key of a request (from the request record when there is one)."""
        record = record_of(scope)
        ip = record.client_ip if record is not None else None
        if record is None:
            ip = client_ip(scope, self._trusted, self._forwarded)
        return ip_key(ip, self._prefix)

    async def key_for(self, scope: Scope) -> str | None:
        """The client key of a request, or None when the client is on the allow list."""
        key: str | None = None
        if self._header is not None:
            for name, value in scope.get("headers") or ():
                if name == self._header:
                    if self._allow_keys and value.decode("latin-1") in self._allow_keys:
                        return None
                    key = hash_key(value, self._secret)
                    break
        elif self._func is not None:
            result = self._func(scope)
            if self._async or inspect.isawaitable(result):
                result = await result
            if result is not None:
                key = str(result)
                if key in self._allow_keys:
                    return None
                if len(key) > 64:  # bound the storage key a callable may produce
                    key = hash_key(key.encode(), self._secret)
        if key is None or self._allow_nets or self._allow_keys:
            record = record_of(scope)
            ip = record.client_ip if record is not None else None
            if record is None:
                ip = client_ip(scope, self._trusted, self._forwarded)
            if ip is not None and self._allow_nets and _in_networks(ip, self._allow_nets):
                return None
            if self._allow_keys and ip in self._allow_keys:
                return None
            if key is None:
                key = ip_key(ip, self._prefix)
        return key


def _in_networks(ip: str, nets: Iterable[IPNetwork]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in nets)
