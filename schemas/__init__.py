"""Record shapes: the single source of truth for every topic's JSON.

Each record is a frozen dataclass in `schemas.records`. From that one definition come
  * the JSON bytes on the topics (`schemas.codec.dumps`, orjson serialises dataclasses natively),
  * the JSON Schema files under `schemas/json/` (`python -m schemas.generate` writes them;
    a test fails when they are stale).
"""
