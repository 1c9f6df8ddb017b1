"""Finding secrets and caller numbers in text, whatever way they were encoded.

A token can reach the ingress raw, percent-encoded (any character, hex in either case), with `+`
for a space, or as JSON `\\uXXXX` escapes; and a field name can be encoded the same way
(`?%74oken=...`). The patterns here match every mix of those forms, so scrubbing works on the
bytes as received, before any decoding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

MASK = "***"


def _char_forms(c: str) -> list[str]:
    forms = [re.escape(c)]
    encoded = c.encode("utf-8")
    forms.append("".join(f"%{b:02x}" for b in encoded))  # matched case-insensitively: %7A == %7a
    if ord(c) < 0x10000:
        forms.append(re.escape(f"\\u{ord(c):04x}"))
    if c == " ":
        forms.append(r"\+")
    if c in '"\\/':
        forms.append(re.escape("\\" + c))
    return forms


def encoded_pattern(text: str) -> str:
    """A regex source matching `text` with each character raw or escaped in any of the forms above."""
    return "".join("(?:" + "|".join(_char_forms(c)) + ")" for c in text)


class Scrubber:
    """Replaces every occurrence of the given secrets (any encoding, any letter case) by `***`."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # longest first, so that a token containing another is replaced whole
        values = sorted({s for s in secrets if s}, key=len, reverse=True)
        source = "|".join(encoded_pattern(s) for s in values)
        self._text = re.compile(source, re.IGNORECASE) if source else None
        self._bytes = re.compile(source.encode("utf-8"), re.IGNORECASE) if source else None

    def __bool__(self) -> bool:
        return self._text is not None

    def text(self, value: str) -> str:
        return self._text.sub(MASK, value) if self._text is not None else value

    def bytes(self, value: bytes) -> bytes:
        return self._bytes.sub(MASK.encode(), value) if self._bytes is not None else value

    def fields(self, value: Any) -> Any:
        """Decoded JSON-like data: strings scrubbed everywhere, keys included."""
        if self._text is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k) if isinstance(k, str) else k: self.fields(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.fields(v) for v in value]
        return value


def _param(name: str) -> re.Pattern[str]:
    """`name=value` in a query string, the name in any encoding; group 1 the name, 2 the value."""
    return re.compile(rf"(?i)(?<![^&;?\s\"'])({encoded_pattern(name)}=)([^&;\s\"']*)")


TOKEN_PARAM = _param("token")
CLI_PARAM = _param("cli")
#: `"cli": "..."` in JSON, `'cli': '...'` in a dict's repr, `cli='...'` in a dataclass's (an event or
#: record in a message)
CLI_FIELD = re.compile(r"""(?i)((?:["']cli["']\s*:|(?<![\w%])cli=)\s*["'])([^"']*)""")
#: what `mask_number` makes: not masked again (a record may pass two filters)
MASKED = re.compile(r"\*\*\*\d{0,4}")


def redact_token_params(text: str) -> str:
    """`token=...` (the name in any encoding) -> `token=***`, whatever the value."""
    return TOKEN_PARAM.sub(lambda m: m.group(1) + MASK, text)


# a `token` field of a body kept without being parsed (cut short at the size limit, multipart, or
# invalid): its value, in JSON (up to its closing quote, or the end of a cut body) and in a
# multipart part (the line after the part's headers)
_JSON_TOKEN = re.compile(rb'(?i)("token"\s*:\s*")((?:[^"\\]|\\.)*)')
_MULTIPART_TOKEN = re.compile(rb'(?i)(content-disposition:[^\r\n]*\bname="?token"?(?:[;\s][^\r\n]*)?\r?\n'
                              rb'(?:[^\r\n]+\r?\n)*\r?\n)([^\r\n]*)')


def redact_token_fields(body: bytes) -> bytes:
    """Every value of a field named `token` in a body, read leniently (a form's `token=`, the name
    in any encoding; JSON; multipart), masked whatever its value; all other bytes as they were."""
    out = redact_token_params(body.decode("latin-1")).encode("latin-1")  # latin-1: byte for byte
    out = _JSON_TOKEN.sub(lambda m: m.group(1) + MASK.encode(), out)
    return _MULTIPART_TOKEN.sub(lambda m: m.group(1) + MASK.encode(), out)


def drop_token_params(query: str) -> str:
    """A query string without its `token` parameters (name in any encoding)."""
    kept = []
    for part in query.split("&"):
        if not part:
            continue
        name = unquote_plus(part.split("=", 1)[0], errors="replace")
        if name.strip().lower() != "token":
            kept.append(part)
    return "&".join(kept)


def mask_number(value: str) -> str:
    """A caller number with only its last digits kept: 4 of 8 or more, 2 of 4 to 7, none of fewer.
    A number masked already stays as it is (a record may pass two filters)."""
    if MASKED.fullmatch(value):
        return value
    digits = [c for c in unquote_plus(value, errors="replace") if c.isdigit()]
    keep = 4 if len(digits) >= 8 else 2 if len(digits) >= 4 else 0
    return MASK + "".join(digits[len(digits) - keep:]) if digits else value


def mask_callers(text: str) -> str:
    """Caller numbers masked where text names them: `cli=` parameters and `cli` fields."""
    text = CLI_PARAM.sub(lambda m: m.group(1) + mask_number(m.group(2)), text)
    return CLI_FIELD.sub(lambda m: m.group(1) + mask_number(m.group(2)), text)
