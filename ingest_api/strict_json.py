"""The one JSON parser of every request body: strict, and naming the field it refuses.

The standard library's ``json.loads`` accepts ``NaN`` and ``Infinity``, turns
``1e400`` into ``inf``, raises ``ValueError`` on a 5,000-digit integer (Python's
int-digits limit), recurses until ``RecursionError`` on deep nesting, and keeps
NUL characters and unpaired surrogates that PostgreSQL's jsonb and text refuse
(a failed statement: a 5xx for a client's mistake). Here the body must be UTF-8,
numbers finite and within 64 bits for integers, containers at most
``MAX_DEPTH`` levels deep, and no string or object key may hold a NUL or an
unpaired surrogate. A refusal is a :class:`StrictJsonError` whose ``errors``
name each offending field by its dotted path (``metadata.score``,
``mails.3.to``), which errors.py answers as problem+json.

The flask-smorest endpoints get their JSON through webargs; :func:`install`
makes webargs' "json" location use :func:`request_json`, which parses the body
once per request, as the CDP endpoint does with the same function.
"""

from __future__ import annotations

import json
import math
from typing import Any

from flask import g, request
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

# Containers (objects and arrays) nest at most this deep; no request needs more.
MAX_DEPTH = 32
# Integers must fit PostgreSQL's bigint (and every client's int64).
MAX_INTEGER = 2**63 - 1
# Longer digit strings are refused before int() sees them (no quadratic parsing,
# no int-digits ValueError).
_MAX_INTEGER_DIGITS = len(str(MAX_INTEGER))
# A body with thousands of bad values gets the first ones named, not all.
MAX_REPORTED = 20
# The key that names the whole body rather than one field (as marshmallow does).
WHOLE_BODY = "_schema"

_CACHE_ATTRIBUTE = "strict_json_body"


class StrictJsonError(ValueError):
    """The body is refused: *status* 400 (not JSON) or 422 (a field's value)."""

    def __init__(self, status: int, message: str, errors: dict[str, list[str]]) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


class _Refused:
    """Stands in for a number the hooks refused, so the walk can name its field."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _parse_constant(name: str) -> _Refused:
    return _Refused(f"{name} is not a JSON number")


def _parse_float(text: str) -> float | _Refused:
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to inf
        return _Refused("number out of range (not a finite 64-bit float)")
    return value


def _parse_int(text: str) -> int | _Refused:
    if len(text.lstrip("-")) > _MAX_INTEGER_DIGITS:
        return _Refused(f"integer out of range (at most {MAX_INTEGER} in magnitude)")
    value = int(text)
    if abs(value) > MAX_INTEGER:
        return _Refused(f"integer out of range (at most {MAX_INTEGER} in magnitude)")
    return value


_DECODER = json.JSONDecoder(
    parse_float=_parse_float, parse_int=_parse_int, parse_constant=_parse_constant
)


def text_problem(text: str) -> str | None:
    """Why PostgreSQL would refuse *text* (a NUL, an unpaired surrogate), or None."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate (\\ud800-\\udfff)"
    return None


def shown(key: str) -> str:
    """A key as it can be echoed in an error: NUL and surrogates escaped."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\u0000")


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path) if path else WHOLE_BODY


def _refusals(value: Any) -> dict[str, list[str]]:
    """Every refused value (up to MAX_REPORTED) by dotted path, in document order."""
    found: dict[str, list[str]] = {}
    stack: list[tuple[Any, tuple[str, ...], int]] = [(value, (), 0)]
    while stack and len(found) < MAX_REPORTED:
        item, path, depth = stack.pop()
        if isinstance(item, _Refused):
            found.setdefault(_dotted(path), []).append(item.reason)
        elif isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                found.setdefault(_dotted(path), []).append(problem)
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                found.setdefault(_dotted(path), []).append(f"nested deeper than {MAX_DEPTH} levels")
                continue
            children: list[tuple[str, Any]]
            if isinstance(item, dict):
                children = []
                for key, child in item.items():
                    problem = text_problem(key)
                    if problem is not None:
                        found.setdefault(_dotted((*path, shown(key))), []).append(
                            "the key " + problem
                        )
                    children.append((shown(key), child))
            else:
                children = [(str(index), child) for index, child in enumerate(item)]
            stack.extend((child, (*path, name), depth + 1) for name, child in reversed(children))
    return found


def loads(body: bytes | str) -> Any:
    """The parsed body, or StrictJsonError naming what is refused."""
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")  # strict: no other encoding, no encoded surrogates
        except UnicodeDecodeError as exc:
            raise StrictJsonError(
                400, "the body is not UTF-8", {WHOLE_BODY: [f"invalid UTF-8 at byte {exc.start}"]}
            ) from None
    else:
        text = body
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise StrictJsonError(
            400,
            "the body is not JSON",
            {WHOLE_BODY: [f"{exc.msg} (line {exc.lineno}, column {exc.colno})"]},
        ) from None
    except RecursionError:  # far deeper than MAX_DEPTH: the C scanner gave up first
        raise StrictJsonError(
            422,
            f"the body nests deeper than {MAX_DEPTH} levels",
            {WHOLE_BODY: [f"nested deeper than {MAX_DEPTH} levels"]},
        ) from None
    refused = _refusals(value)
    if refused:
        raise StrictJsonError(422, "the request has invalid fields: " + ", ".join(refused), refused)
    return value


def request_json() -> Any:
    """This request's body parsed by :func:`loads`, once per request (``core.missing`` if empty)."""
    if _CACHE_ATTRIBUTE not in g:
        body = request.get_data(cache=True)
        setattr(g, _CACHE_ATTRIBUTE, loads(body) if body else core.missing)
    return getattr(g, _CACHE_ATTRIBUTE)


def _load_json_location(req: Any, schema: Any) -> Any:
    """webargs' "json" location: like FlaskParser's, but through :func:`loads`."""
    if not is_json_request(req):
        return core.missing
    return request_json()


def install(parser: FlaskParser) -> None:
    """Make *parser* (flask-smorest's shared one) load JSON bodies with :func:`loads`.

    The parser is bound to each endpoint when its module is imported, so a new
    parser set later would not be used; its location loaders are looked up per
    request, so replacing the "json" loader reaches every endpoint.
    """
    # location_loader writes into the map it finds, FlaskParser's class-level one:
    # give this parser its own, so other FlaskParser instances keep webargs' loader.
    parser.__location_map__ = {**parser.__location_map__}
    parser.location_loader("json")(_load_json_location)
