"""A step's refusal of an input it cannot take, before it changed anything."""

from __future__ import annotations


class Refused(ValueError):
    """The input is refused as it is (a rule of the core, not a bug): the step raised it before
    changing the state, so the runtime dead-letters the record without putting the state back,
    and logs the reason without a traceback."""
