"""What a rate limit applies to: limits, route patterns matched as the frameworks route, client keys.

# Strategy: route patterns are matched by ``buttress._paths.RouteTable`` against every
# spelling of the path some framework routes to the same handler (see there).
"""

from __future__ import annotations

import hashlib
import inspect
import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from buttress._asgi import Scope
from buttress._paths import RouteTable, path_spellings
from buttress._request import client_ip, record_of
from buttress.config import IPNetwork
from buttress.logs import LogThrottle

if TYPE_CHECKING:
    from limits import RateLimitItem

    from buttress.ratelimit_tables import CounterTable

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
    """The limits of one route pattern (or of the default), with its log throttle and counter.

    ``name`` identifies its counters in the storage (rules of one ``shared`` group have
    one name, so they share one budget); ``label`` names it in metrics and logs (its
    pattern, so the label stays bounded). ``cost`` is what one request spends; ``count``
    is ``"all"``, or ``"failures"``/``"successes"`` to charge only requests whose status
    is >= 400 / < 400 (decided after the response; refused up front once spent). A
    ``dynamic`` rule asks a callable for the limit of each client key (cached).
    """

    __slots__ = (
        "_by_key",
        "_by_spec",
        "chain",
        "cost",
        "count",
        "dynamic",
        "interval",
        "label",
        "limits",
        "name",
        "plan",
        "rejections",
        "throttle",
    )

    #: Keys whose dynamic limit is remembered (the cache is dropped whole when full).
    KEY_CACHE = 10_000

    def __init__(
        self,
        name: str,
        limits: tuple[Limit, ...],
        throttle_interval: float,
        *,
        label: str | None = None,
        cost: int = 1,
        count: str = "all",
        dynamic: Callable[[str], str] | None = None,
    ) -> None:
        self.name = name
        self.label = label or name
        self.limits = limits
        self.cost = cost
        self.count = count
        self.dynamic = dynamic
        self.interval = throttle_interval
        self.throttle = LogThrottle(throttle_interval)
        self.chain: tuple[Rule, ...] = (self,)
        self.rejections: Any = None
        #: ``memory://``: (rule, limit, counters) for every limit of the chain.
        self.plan: tuple[tuple[Rule, Limit, CounterTable], ...] = ()
        self._by_key: dict[str, Rule] = {}
        self._by_spec: dict[str, Rule] = {}

    @property
    def template(self) -> str:
        """The pattern of the rule without its method (``/auth/login``), or ``*``."""
        return self.label.rpartition(" ")[2]

    def for_key(self, key: str, prepare: Callable[[Rule], None]) -> Rule:
        """The concrete rule of a dynamic rule for ``key`` (``prepare`` readies a new one)."""
        found = self._by_key.get(key)
        if found is not None:
            return found
        assert self.dynamic is not None
        spec = self.dynamic(key)
        found = self._by_spec.get(spec)
        if found is None:
            if len(self._by_spec) >= 256:
                self._by_spec.clear()
            limits = parse_limits(spec, f"the limit returned for {self.label!r}")
            found = Rule(
                self.name, limits, self.interval, label=self.label, cost=self.cost, count=self.count
            )
            found.rejections = self.rejections
            found.throttle = self.throttle
            prepare(found)
            self._by_spec[spec] = found
        if len(self._by_key) >= self.KEY_CACHE:
            self._by_key.clear()
        self._by_key[key] = found
        return found


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


def rules_from(limits: Mapping[str, Any], interval: float) -> list[tuple[str, Rule]]:
    """``{"POST /login": "10/minute"}`` (or ``{"limit": ..., "shared": ..., "cost": ...,
    "count": ...}`` per route, or a callable of the client key) as named rules."""
    out: list[tuple[str, Rule]] = []
    for key, value in limits.items():
        pattern = key.strip()
        spec: Any = value
        options: dict[str, Any] = {}
        if isinstance(value, Mapping):
            spec = value["limit"]
            options = {k: value[k] for k in ("cost", "count") if k in value}
            if value.get("shared"):
                options["name"] = f"shared:{value['shared']}"
        name = options.pop("name", pattern)
        if callable(spec):
            rule = Rule(name, (), interval, label=pattern, dynamic=spec, **options)
        else:
            limits_ = parse_limits(spec, f"limits[{key!r}]")
            rule = Rule(name, limits_, interval, label=pattern, **options)
        out.append((pattern, rule))
    return out


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

    def _client_ip(self, scope: Scope) -> str | None:
        """The record's client IP; used alone (no context layer), resolved here."""
        record = record_of(scope)
        if record is not None:
            return record.client_ip
        return client_ip(scope, self._trusted, self._forwarded)

    def ip(self, scope: Scope) -> str:
        """The client-IP key of a request (from the request record when there is one)."""
        return ip_key(self._client_ip(scope), self._prefix)

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
            ip = self._client_ip(scope)
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
