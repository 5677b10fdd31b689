"""Decoding a request body's JSON within bounds that every value the service stores can meet.

json.loads alone lets through what later fails deep inside the service as a 500: nesting
deep enough to exhaust the recursion limit (in json.loads itself, or in anything that walks
the value afterwards), integers past Python's 4300-digit conversion limit, NaN and Infinity
(not JSON at all), NUL characters (which PostgreSQL text cannot hold) and lone surrogates
(which no UTF-8 encoder takes). Each is refused here as InvalidParameter, naming where in the
body it is where that is known.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from array import array
from typing import Any

from imagesynth.errors import InvalidParameter

# No DashScope body nests deeper than 5 (input.messages[0].content[0].text); 32 leaves room for
# unknown fields that are ignored, and keeps every walk of a body far from the recursion limit.
MAX_DEPTH = 32
# A number longer than this is out of range for every field (the largest, seed, has 10 digits).
MAX_NUMBER_CHARS = 100

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
# An opening bracket +1, a closing one -1 (0xff read as a signed byte).
_STEP = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")


class _OutOfRange:
    """A number no field takes, kept in the decoded body until its place can be named."""

    def __init__(self, text: str) -> None:
        self.text = text

    def describe(self) -> str:
        if self.text in ("NaN", "Infinity", "-Infinity"):
            return f"{self.text} is not a JSON number"
        return f"a number of {len(self.text)} characters is out of range"


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in `text`, counted without decoding it (so without
    recursion): strings are dropped, then each bracket steps the depth up or down."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text)).encode("ascii")
    return max(itertools.accumulate(array("b", brackets.translate(_STEP))), default=0)


def _number(text: str, convert: type[int] | type[float]) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        return _OutOfRange(text)
    value = convert(text)
    return value if math.isfinite(value) else _OutOfRange(text)


def _where(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "body"


def _check_text(text: str, path: list[str | int]) -> None:
    if "\x00" in text:
        raise InvalidParameter(f"{_where(path)}: text must not contain NUL (\\u0000)")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidParameter(
                f"{_where(path)}: text must be valid Unicode (it holds a lone surrogate)"
            ) from None


def _check_values(body: Any) -> None:
    """Refuse the first out-of-range number, or text no store can hold, naming its place.
    Iterative: the depth is bounded already, but a walk need not rely on it."""
    stack: list[tuple[list[str | int], Any]] = [([], body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, _OutOfRange):
            raise InvalidParameter(f"{_where(path)}: {value.describe()}")
        if isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, dict):
            for name, item in reversed(value.items()):
                _check_text(name, [*path, name])
                stack.append(([*path, name], item))
        elif isinstance(value, list):
            stack.extend(([*path, i], item) for i, item in reversed(list(enumerate(value))))


def decode_json(data: bytes) -> Any:
    """The JSON value of a request body, within the bounds above; InvalidParameter if not."""
    try:
        # As json.loads decodes bytes (UTF-8, -16 or -32), but before scanning the text, so
        # that the depth is counted on characters, never on bytes of a wider encoding.
        text = data.decode(json.detect_encoding(data), "surrogatepass")
    except UnicodeDecodeError as exc:
        raise InvalidParameter(f"Request body is not valid JSON: {exc}") from None
    if nesting_depth(text) > MAX_DEPTH:
        raise InvalidParameter(f"Request body nests arrays and objects deeper than {MAX_DEPTH}.")
    try:
        body = json.loads(
            text,
            parse_int=lambda s: _number(s, int),
            parse_float=lambda s: _number(s, float),
            parse_constant=_OutOfRange,
        )
    except json.JSONDecodeError as exc:
        raise InvalidParameter(f"Request body is not valid JSON: {exc}") from None
    _check_values(body)
    return body
