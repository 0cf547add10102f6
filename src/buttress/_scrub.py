"""Secrets in a request: which names are sensitive, which values to hide, and where to hide them.

Shared by Sentry's ``before_send`` (events) and the log chain (log lines), so both hide the
same things; neither imports the other.

# Strategy: names by sentry-sdk's own lists, values everywhere. A header or query parameter
# is sensitive when its name (lower case, ``-`` as ``_``) contains a term of sentry-sdk's
# ``DEFAULT_DENYLIST``, ``SENSITIVE_HEADERS`` (and, on sentry-sdk 2.75, ``data_collection``'s
# denylist); terms of three letters or fewer (``key``, ``sid``, ``jwt``) must be a whole
# word, so ``keyword`` or ``inside`` stay. IP-carrying names (``DEFAULT_PII_DENYLIST``,
# ``Forwarded``, ``*-IP``, ``Via``) are sensitive only while ``send_default_pii`` is off.
# This is stricter than sentry-sdk's exact-name match (it sends ``X-Auth-Token`` and the raw
# query string). Masking a name is not enough: the same value sits in frame locals (the ASGI
# scope, a ``headers`` dict, ``key = api_key``), so every masked value is collected and
# replaced wherever it occurs in the event, or in a log line.
"""

from __future__ import annotations

import contextvars
import functools
import re
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode

from buttress._asgi import Scope

__all__ = [
    "FILTERED",
    "LOG_SECRETS",
    "RequestSecrets",
    "is_sensitive",
    "masked_query",
    "request_secrets",
    "scrub",
    "scrub_log_event",
]

FILTERED = "[Filtered]"
MIN_SECRET = 4  # shorter values would filter innocent text everywhere
_SPLIT = re.compile(r"[^a-z0-9]+")
# IP-carrying names beyond sentry-sdk's public lists (its PII-off terms are private).
_PII_SUBSTRINGS = ("forwarded", "remote_", "client_ip", "connecting_ip")
_PII_WORDS = ("ip", "via")
_PII_FALLBACK = ("x_forwarded_for", "x_real_ip", "ip_address", "remote_addr")


@functools.cache
def _terms() -> tuple[tuple[str, ...], frozenset[str], tuple[str, ...], frozenset[str]]:
    """(credential substrings, credential words, PII substrings, PII words)."""
    from sentry_sdk import scrubber
    from sentry_sdk.integrations._wsgi_common import SENSITIVE_HEADERS

    pii = {t.lower().replace("-", "_") for t in getattr(scrubber, "DEFAULT_PII_DENYLIST", ())}
    pii |= set(_PII_FALLBACK)  # sentry-sdk 2.0.0 keeps these in DEFAULT_DENYLIST
    names = [*scrubber.DEFAULT_DENYLIST, *SENSITIVE_HEADERS]
    try:  # sentry-sdk 2.75+: the denylist of its data_collection API
        from sentry_sdk.data_collection import _SENSITIVE_DENYLIST

        names += list(_SENSITIVE_DENYLIST)
    except ImportError:
        pass
    creds = {n.lower().replace("-", "_") for n in names} - pii
    long_creds = tuple(sorted(t for t in creds if len(t) > 3))
    short_creds = frozenset(t for t in creds if len(t) <= 3)
    return long_creds, short_creds, (*sorted(pii), *_PII_SUBSTRINGS), frozenset(_PII_WORDS)


def warm() -> None:
    """Build the name lists now (they import sentry-sdk), not on the first request."""
    _terms()


def is_sensitive(name: str, pii_allowed: bool = False, extra: Iterable[str] = ()) -> bool:
    """Whether a header, parameter or variable called ``name`` holds a secret (or an IP)."""
    low = name.lower().replace("-", "_")
    return low in extra or _sensitive_name(low, pii_allowed)


@functools.lru_cache(maxsize=4096)
def _sensitive_name(low: str, pii_allowed: bool) -> bool:
    long_creds, short_creds, pii, pii_words = _terms()
    if any(t in low for t in long_creds):
        return True
    words = _SPLIT.split(low)
    if short_creds.intersection(words):
        return True
    if pii_allowed:
        return False
    return any(t in low for t in pii) or not pii_words.isdisjoint(words)


def normal_names(names: Iterable[str]) -> frozenset[str]:
    """Configured header names (the rate-limit key header) as ``is_sensitive`` compares them."""
    return frozenset(n.strip().lower().replace("-", "_") for n in names if n.strip())


def add_secret(found: set[str], value: str) -> None:
    """A value, and its parts: the token after ``Bearer``, each cookie, each list item."""
    value = value.strip()
    if not value or value == FILTERED:
        return
    found.add(value)
    _scheme, _, token = value.partition(" ")
    if token.strip():
        found.add(token.strip())
    for part in re.split(r"[;,]", value):
        part = part.strip()
        if part and part != value:
            found.add(part)
        _name, eq, cookie = part.partition("=")
        if eq and cookie.strip():
            found.add(cookie.strip())


def masked_query(raw: str, pii_allowed: bool, extra: Iterable[str], found: set[str]) -> str | None:
    """``raw`` with sensitive parameters' values as ``[Filtered]`` (None when unreadable)."""
    if not raw:
        return raw
    masked = False
    for segment in raw.split("&"):
        name, eq, value = segment.partition("=")
        if eq and value and is_sensitive(unquote_plus(name), pii_allowed, extra):
            add_secret(found, value)  # as it travels (percent-encoded) ...
            add_secret(found, unquote_plus(value))  # ... and as the app read it
            masked = True
    if not masked:
        return raw
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=False)
    except ValueError:
        return None
    out = [(k, FILTERED if v and is_sensitive(k, pii_allowed, extra) else v) for k, v in pairs]
    return urlencode(out, safe="[]")


def request_secrets(scope: Scope, pii_allowed: bool, extra: Iterable[str] = ()) -> set[str]:
    """Every value of ``scope`` to hide: sensitive headers and parameters (and the IP)."""
    found: set[str] = set()
    for key, value in scope.get("headers") or ():
        if is_sensitive(key.decode("latin-1"), pii_allowed, extra):
            add_secret(found, value.decode("latin-1"))
    query = scope.get("query_string") or b""
    if query:
        masked_query(query.decode("latin-1"), pii_allowed, extra, found)
    if not pii_allowed:
        client = scope.get("client")
        if client:
            found.add(str(client[0]))
        from buttress._request import record_of

        record = record_of(scope)
        if record is not None and record.client_ip:
            found.add(str(record.client_ip))
    return found


def mask_request(
    request: dict[str, Any], pii_allowed: bool, extra: Iterable[str], found: set[str]
) -> None:
    """Mask an event's ``request`` in place, whoever filled it; collect what was masked."""
    headers = request.get("headers")
    if isinstance(headers, dict):
        for name, value in list(headers.items()):
            if isinstance(name, str) and is_sensitive(name, pii_allowed, extra):
                if isinstance(value, str):
                    add_secret(found, value)
                headers[name] = FILTERED
    query = request.get("query_string")
    if isinstance(query, str) and query:
        masked = masked_query(query, pii_allowed, extra, found)
        if masked is None:
            request.pop("query_string", None)
        else:
            request["query_string"] = masked
    elif query:
        request.pop("query_string", None)  # a shape we cannot read: not sent
    if "data" in request:
        request["data"] = _mask_data(request["data"], pii_allowed, extra, found, 0)
    if not pii_allowed:
        env = request.get("env")
        if isinstance(env, dict):
            for name in [n for n in env if isinstance(n, str) and is_sensitive(n, False)]:
                value = env.pop(name)
                if isinstance(value, str):
                    add_secret(found, value)
            if not env:
                request.pop("env")
        request.pop("cookies", None)


def _mask_data(value: Any, pii: bool, extra: Iterable[str], found: set[str], depth: int) -> Any:
    """A JSON request body with the values of sensitive keys filtered (and collected)."""
    if depth > 20:
        return FILTERED
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(key, str) and is_sensitive(key, pii, extra):
                if isinstance(item, str):
                    add_secret(found, item)
                out[key] = FILTERED
            else:
                out[key] = _mask_data(item, pii, extra, found, depth + 1)
        return out
    if isinstance(value, list):
        return [_mask_data(item, pii, extra, found, depth + 1) for item in value]
    return value


def _unrepr(text: str) -> str:
    """``"b'abc'"`` (how Sentry serializes bytes) as ``"abc"``."""
    if len(text) >= 3 and text[0] == "b" and text[1] in "'\"" and text[-1] == text[1]:
        return text[2:-1]
    return text


def scrub(event: Any, known: Iterable[str], pii_allowed: bool, extra: Iterable[str]) -> None:
    """Filter sensitive keys and every string holding a known or found secret, in place.

    Values are found under sensitive keys and in ``(name, value)`` header pairs such as an
    ASGI scope's headers in frame locals; every string containing one, anywhere, is filtered.
    """
    found: set[str] = set()
    for value in known:
        add_secret(found, value)
    _harvest(event, found, pii_allowed, frozenset(extra), 0)
    _replace(event, ordered(found), 0)


def ordered(found: Iterable[str]) -> list[str]:
    """Secrets long enough to replace, longest first (so a part never splits a whole)."""
    return sorted((s for s in set(found) if len(s) >= MIN_SECRET), key=len, reverse=True)


def _harvest(obj: Any, found: set[str], pii: bool, extra: frozenset[str], depth: int) -> None:
    if depth > 20:
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str) and is_sensitive(key, pii, extra):
                if isinstance(value, str):
                    add_secret(found, _unrepr(value))
                obj[key] = FILTERED
            else:
                _harvest(value, found, pii, extra, depth + 1)
    elif isinstance(obj, (list, tuple)):
        if (
            len(obj) == 2
            and isinstance(obj[0], str)
            and isinstance(obj[1], str)
            and is_sensitive(_unrepr(obj[0]), pii, extra)
        ):
            add_secret(found, _unrepr(obj[1]))
            return
        for item in obj:
            _harvest(item, found, pii, extra, depth + 1)


def _replace(obj: Any, secrets: list[str], depth: int) -> Any:
    if depth > 20 or not secrets:
        return obj
    if isinstance(obj, str):
        for secret in secrets:
            if secret in obj:
                obj = obj.replace(secret, FILTERED)
        return obj
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _replace(value, secrets, depth + 1)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            obj[i] = _replace(item, secrets, depth + 1)
    elif isinstance(obj, tuple):
        return tuple(_replace(item, secrets, depth + 1) for item in obj)
    return obj


# --- log lines ----------------------------------------------------------------------------


class RequestSecrets:
    """The credential values of one request, found the first time a log line asks."""

    __slots__ = ("_extra", "_scope", "_values")

    def __init__(self, scope: Scope, extra: frozenset[str] = frozenset()) -> None:
        self._scope = scope
        self._extra = extra
        self._values: list[str] | None = None

    def values(self) -> list[str]:
        if self._values is None:
            # IPs stay: the log context carries client_ip on purpose.
            self._values = ordered(request_secrets(self._scope, True, self._extra))
        return self._values


#: The secrets of the request being served (set by the error layer), for the log chain.
LOG_SECRETS: contextvars.ContextVar[RequestSecrets | None] = contextvars.ContextVar(
    "buttress_log_secrets", default=None
)


def scrub_log_event(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: the request's secrets never reach a log line.

    Values in the event (the message, bound values) are replaced; an exception whose text
    holds one is rendered from a stand-in with the same type name, text (scrubbed),
    traceback, cause and context, so every renderer (JSON or console) shows it filtered.
    """
    holder = LOG_SECRETS.get()
    if holder is None:
        return event_dict
    secrets = holder.values()
    if not secrets:
        return event_dict
    for key, value in event_dict.items():
        if key == "exc_info":
            continue
        if isinstance(value, (str, dict, list, tuple)):
            event_dict[key] = _replace(value, secrets, 0)
    exc_info = event_dict.get("exc_info")
    if exc_info:
        exc = _exception_of(exc_info)
        if exc is not None:
            clean = _clean_exception(exc, secrets, 0)
            if clean is not exc:
                event_dict["exc_info"] = (type(clean), clean, exc.__traceback__)
    return event_dict


def _exception_of(exc_info: Any) -> BaseException | None:
    import sys

    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        return exc_info[1] if isinstance(exc_info[1], BaseException) else None
    return sys.exc_info()[1]


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return ""


def _clean_exception(exc: BaseException, secrets: list[str], depth: int) -> BaseException:
    """``exc``, or a stand-in without the secrets when its chain holds one."""
    if depth > 10:
        return exc
    cause, context = exc.__cause__, exc.__context__
    new_cause = _clean_exception(cause, secrets, depth + 1) if cause is not None else None
    new_context = new_cause if context is cause else None
    if context is not None and context is not cause:
        new_context = _clean_exception(context, secrets, depth + 1)
    text = _text(exc)
    notes = [n for n in getattr(exc, "__notes__", ()) if isinstance(n, str)]
    dirty = any(s in t for s in secrets for t in (text, *notes))
    if not dirty and new_cause is cause and new_context is context:
        return exc
    clean_text = _replace(text, secrets, 0)
    base = Exception if isinstance(exc, Exception) else BaseException
    stand_in_type = type(
        type(exc).__name__,
        (base,),
        {"__module__": type(exc).__module__, "__str__": lambda self: clean_text},
    )
    stand_in: BaseException = stand_in_type(clean_text)
    stand_in.__traceback__ = exc.__traceback__
    stand_in.__cause__ = new_cause
    stand_in.__context__ = new_context
    stand_in.__suppress_context__ = exc.__suppress_context__
    if notes:
        setattr(stand_in, "__notes__", [_replace(n, secrets, 0) for n in notes])  # noqa: B010
    return stand_in
