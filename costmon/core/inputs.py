"""What the API accepts: JSON request bodies, and the characters names may hold.

Every API decodes its JSON body with `load_json` (DRF views through `JsonBodyParser`), and checks
the characters of names with `text_problem` (the usage batch and the check for every string, DRF
views in their fields: costmon.core.fields.StrictCharField), so one set of rules holds everywhere:
- the body is UTF-8 JSON (RFC 8259): no NaN or Infinity, no lone surrogate (`"\\ud800"`), at most
  `MAX_DEPTH` levels of arrays and objects;
- names (end users, models, operations, providers, tags, event and session ids, and the names
  of budgets, rules and channels) are any Unicode text without control characters: letters of
  any script (right-to-left too), emoji, spaces, quotes and `/ % ? # & < >` are all fine;
  U+0000-U+001F, U+007F-U+009F and the line and paragraph separators U+2028 and U+2029 are not.
  Free text (an emergency stop's reason) may also hold tabs and line breaks.
Each refusal is a 400 naming the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

from rest_framework.parsers import BaseParser

from costmon.core.errors import DomainError

MAX_DEPTH = 32
# An amount as text: digits with an optional fraction (no sign, exponent, spaces or `_`, which
# Decimal() would take); a leading `-` is read only to say "Must not be negative".
DECIMAL_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?")
# The JSON Schema pattern of such an amount of US dollars from 0 to 100,000 (the most one call
# may cost or be estimated at).
USD_TEXT_PATTERN = r"^0*([0-9]{1,5}(\.[0-9]+)?|100000(\.0+)?)$"

# Characters no name may hold. Surrogates cannot be encoded (UTF-8 has no form for them):
# JSON can carry one only as a lone `\ud800`-style escape.
_NAME_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_TEXT_REFUSED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_CHARACTER_NAMES = {
    "\x00": "NUL",
    "\t": "a tab",
    "\n": "a line feed",
    "\r": "a carriage return",
    "\u2028": "a line separator",
    "\u2029": "a paragraph separator",
}
# A JSON body can hold a refused character only as an escape (raw control characters are
# invalid JSON: `\n`, `\u001b`, a lone `\ud800`), or as DEL or the UTF-8 bytes of a C1 control or
# of U+2028/U+2029. Bodies with none of these (nearly all, emoji sent as escaped surrogate
# pairs included) need no look at their strings.
_NOT_REFUSED_ESCAPES = re.compile(  # an escaped backslash; an escaped surrogate pair (an emoji)
    rb"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)
_MAY_HOLD_REFUSED = re.compile(
    rb"\\(?:[btnfr]|u00[01][0-9a-fA-F]|u007[fF]|u00[89][0-9a-fA-F]|u202[89]|u[dD][89a-fA-F])"
    rb"|\x7f|\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]"
)
# A surrogate escape not in a pair: a high one with no low one after it, or a low one alone.
_SURROGATE_ESCAPE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(value: str, *, multiline: bool = False) -> str | None:
    """Why `value` cannot be a name (or, `multiline`, free text); None when it can."""
    found = (_TEXT_REFUSED if multiline else _NAME_REFUSED).search(value)
    if found is None:
        return None
    char = found.group()
    if "\ud800" <= char <= "\udfff":
        return (
            f"Must be valid Unicode: a lone surrogate (U+{ord(char):04X}) at position "
            f"{found.start()} is not a character."
        )
    what = _CHARACTER_NAMES.get(char, "a control character")
    allowed = "" if multiline else " or line breaks"
    return (
        f"Must not contain control characters{allowed}: {what} (U+{ord(char):04X}) at "
        f"position {found.start()}."
    )


def may_hold_refused(body: bytes) -> bool:
    """False when the raw JSON `body` cannot hold a character `text_problem` refuses."""
    if (
        b"\\" not in body
        and b"\x7f" not in body
        and b"\xc2" not in body
        and b"\xe2\x80" not in body
    ):
        return False
    return _MAY_HOLD_REFUSED.search(_NOT_REFUSED_ESCAPES.sub(b"", body)) is not None


def field_name(name: Any) -> str:
    """A field name as an error can name it: a lone surrogate cannot be encoded in the reply,
    so it is written as its escape (`\\ud800`)."""
    text = str(name)
    return text.encode("utf-8", "backslashreplace").decode() if _SURROGATE.search(text) else text


def strings_in(value: Any, path: str = "") -> Iterator[tuple[str, str, bool]]:
    """Every string in a decoded JSON value with its field path (`config.to.0`, `tags.team`)
    and whether it is an object key."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, str):
            yield where, node, False
        elif isinstance(node, Mapping):
            for key, item in node.items():
                shown = field_name(key)
                inner = f"{where}.{shown}" if where else shown
                if isinstance(key, str):
                    yield inner, key, True
                stack.append((inner, item))
        elif isinstance(node, list):
            stack.extend((f"{where}.{i}" if where else str(i), item) for i, item in enumerate(node))


def impossible_date_reason(exc: ValueError) -> str:
    """Why a well-formed date-time does not exist (February 30th, second 60, offset +25:00),
    from the ValueError Python raised for it, in a person's words."""
    reason = str(exc)
    if reason.startswith("offset must be"):
        return "a UTC offset must be less than 24 hours"
    return reason


def text_problems(value: Any) -> Iterator[tuple[str, str]]:
    """(field path, problem) of every string in a decoded JSON value, object keys included,
    that cannot be a name; quick where none is (a path is only made for a refused string)."""
    stack: list[tuple[str, Any]] = [("", value)]
    search = _NAME_REFUSED.search
    while stack:
        where, node = stack.pop()
        if isinstance(node, str):
            if search(node):
                yield where, text_problem(node) or ""
            continue
        if isinstance(node, dict):
            items: Any = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            continue
        for key, item in items:
            if isinstance(key, str) and search(key):
                inner = field_name(key)
                yield (f"{where}.{inner}" if where else inner), text_problem(key) or ""
            if isinstance(item, str):
                if search(item):
                    inner = field_name(key)
                    yield (f"{where}.{inner}" if where else inner), text_problem(item) or ""
            elif isinstance(item, dict | list):
                inner = field_name(key)
                stack.append((f"{where}.{inner}" if where else inner, item))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def depth_of(value: Any, *, limit: int) -> int:
    """How deep arrays and objects nest in `value`, counted up to `limit` + 1."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _too_deep() -> DomainError:
    return DomainError(f"The JSON body nests arrays and objects more than {MAX_DEPTH} levels deep.")


def load_json(
    body: bytes, *, max_depth: int | None = MAX_DEPTH, strings_checked: bool = False
) -> Any:
    """Decode a JSON request body, numbers with a fraction or exponent as exact Decimals.

    Raises DomainError (400) naming the problem. `max_depth=None` skips the depth count for a
    caller whose own validation accepts a fixed shape (the usage batch); a body deep enough to
    exhaust the parser is refused either way. `strings_checked`: the caller checks every string
    with `text_problem` itself (and reports it in its own shape), lone surrogates included."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DomainError(
            f"The body is not UTF-8 (byte 0x{body[exc.start]:02x} at position {exc.start}); "
            "send JSON encoded as UTF-8."
        ) from None
    try:
        data = json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:
        raise DomainError(f"Malformed JSON: {exc}") from None
    # Fewer brackets in all than the limit cannot nest deeper than it: no need to count.
    if (
        max_depth is not None
        and body.count(b"[") + body.count(b"{") > max_depth
        and depth_of(data, limit=max_depth) > max_depth
    ):
        raise _too_deep()
    if not strings_checked and _SURROGATE_ESCAPE.search(body):
        for where, value, _ in strings_in(data):
            if _SURROGATE.search(value):
                raise DomainError(text_problem(value) or "Must be valid Unicode.", field=where)
    return data


class JsonBodyParser(BaseParser):
    """DRF's JSON parser with costmon's rules (`load_json`). The characters of each field are
    the serializer's to check (costmon.core.fields.StrictCharField), so a refusal names the field."""

    media_type = "application/json"

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        return load_json(stream.read() if stream is not None else b"")


class DeferredJsonParser(BaseParser):
    """For views that decode `request.body` themselves (usage, check): accepts JSON without
    reading it, so DRF's own look at the body (CSRF for a logged-in member) answers instead of
    415. The view then parses with `load_json` and its own whole-body validation."""

    media_type = "application/json"

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        return {}
