"""Webhook tokens: constant-time comparison against every accepted token (rotation)."""

from __future__ import annotations

import hmac


class TokenCheck:
    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._tokens = tuple(t.encode() for t in tokens if t)

    @property
    def configured(self) -> bool:
        return bool(self._tokens)

    def accepts(self, presented: str | None) -> bool:
        if not presented or not self._tokens:
            return False
        given = presented.encode()
        ok = False
        for token in self._tokens:  # no early exit: time does not tell which token matched
            ok |= hmac.compare_digest(given, token)
        return ok
