"""The bytes of an error response: the contract's JSON body, and what an error page says.

# Strategy: the contract holds whatever the detail is. A detail orjson refuses (an object,
# bytes, a set) is sent as text or as its status's reason phrase, never as a 500 of the
# error layer itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from buttress._asgi import reason

__all__ = ["content_length", "error_body", "text_detail"]

_TEXT_DETAIL_MAX = 1000


def error_body(status: int, detail: Any, problem: bool, instance: str) -> bytes:
    """``{"detail": ...}`` (or RFC 9457 problem+json for ``instance``) as JSON bytes."""
    if problem:
        payload: dict[str, Any] = {
            "type": "about:blank",
            "title": reason(status),
            "status": status,
            "detail": detail,
            "instance": instance,
        }
    else:
        payload = {"detail": detail}
    try:
        return orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        payload["detail"] = _jsonable(detail, reason(status))
        return orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS, default=str)


def _jsonable(detail: Any, fallback: str) -> Any:
    """A detail orjson refused, as JSON: text kept as text, anything else as its reason."""
    if isinstance(detail, bytes):
        return detail.decode("utf-8", "replace")
    if isinstance(detail, (set, frozenset, tuple)):
        return [str(item) for item in detail]
    return fallback


def content_length(headers: Iterable[tuple[bytes, bytes]] | None) -> int | None:
    for key, value in headers or ():
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def text_detail(content_type: bytes, body: bytes) -> str | None:
    """Short plain text is kept as the detail; HTML, binary or long text is not."""
    if not body or b"html" in content_type or b"xml" in content_type:
        return None
    if content_type and not content_type.startswith(b"text/plain"):
        return None
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if not text or len(text) > _TEXT_DETAIL_MAX or text.startswith("<"):
        return None
    if not text.replace("\n", " ").replace("\t", " ").isprintable():
        return None
    return text
