"""Write `schemas/json/<topic>.schema.json` from the record dataclasses.

    python -m schemas.generate          # rewrite the files
    python -m schemas.generate --check  # exit 1 if a file is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from schemas.catalogue import BUNDLED_TOPICS, SINGLE_TOO_TOPICS, TOPIC_RECORDS
from schemas.jsonschema import schema_for

OUT = Path(__file__).parent / "json"


def rendered() -> dict[Path, bytes]:
    return {
        OUT / f"{topic}.schema.json":
            orjson.dumps(schema_for(cls, topic, topic in BUNDLED_TOPICS, topic in SINGLE_TOO_TOPICS),
                         option=orjson.OPT_INDENT_2) + b"\n"
        for topic, cls in TOPIC_RECORDS.items()
    }


def main(argv: list[str]) -> int:
    files = rendered()
    if "--check" in argv:
        stale = [p.name for p, data in files.items() if not p.exists() or p.read_bytes() != data]
        if stale:
            print(f"stale JSON Schema files (run `python -m schemas.generate`): {stale}", file=sys.stderr)
            return 1
        return 0
    OUT.mkdir(exist_ok=True)
    for path, data in files.items():
        path.write_bytes(data)
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
