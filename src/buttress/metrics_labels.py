"""Extra metric labels from a request header, a response header or a callable, with bounded values.

# Strategy: every label value an attacker can choose is a new time series. Each extra
# label keeps at most ``max_values`` distinct values; later ones are ``<other>``, and a
# missing value is the empty string. Header names are encoded once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from buttress._asgi import Scope
from buttress._request import RequestRecord

__all__ = ["OTHER_VALUE", "ExtraLabels", "exemplar_of"]

OTHER_VALUE = "<other>"

Source = str | Callable[[Scope, RequestRecord], "str | None"]


class ExtraLabels:
    """Computes the extra label values of one request."""

    def __init__(self, labels: Mapping[str, Source], max_values: int = 50) -> None:
        self.names = tuple(labels)
        self._getters: list[Callable[[Scope, RequestRecord], str | None]] = []
        for name, source in labels.items():  # names and sources checked by config.option
            self._getters.append(_getter(name, source))
        self._seen: list[set[str]] = [set() for _ in self.names]
        self._max = max_values

    def __bool__(self) -> bool:
        return bool(self.names)

    def values(self, scope: Scope, record: RequestRecord) -> tuple[str, ...]:
        out = []
        for getter, seen in zip(self._getters, self._seen, strict=True):
            try:
                value = getter(scope, record)
            except Exception:  # a user callable must never fail the request
                value = None
            text = "" if value is None else str(value)[:128]
            if text not in seen:
                if len(seen) >= self._max:
                    text = OTHER_VALUE
                else:
                    seen.add(text)
            out.append(text)
        return tuple(out)


def _header(headers: Iterable[tuple[bytes, bytes]] | None, name: bytes) -> str | None:
    for key, value in headers or ():
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _getter(name: str, source: Source) -> Callable[[Scope, RequestRecord], str | None]:
    if callable(source):
        return source
    kind, _, header = str(source).partition(":")
    wanted = header.strip().lower().encode("latin-1")
    if kind == "request" and wanted:
        return lambda scope, record: _header(scope.get("headers"), wanted)
    if kind == "response" and wanted:
        return lambda scope, record: _header(record.response_headers, wanted)
    raise ValueError(
        f"extra_labels[{name!r}]={source!r} is not a label source; write 'request:<Header>', "
        "'response:<Header>' or pass a callable of (scope, record)."
    )


def exemplar_of(record: RequestRecord) -> dict[str, str] | None:
    """The default exemplar: the request's W3C trace id, when it came with one."""
    trace_id = record.trace_id
    return {"trace_id": trace_id} if trace_id is not None else None
