"""Derive JSON Schema (draft 2020-12) from the record dataclasses."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from schemas.types import Format, Minimum


def _scalar(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = get_origin(tp)
    if origin is typing.Annotated:
        base, *meta = get_args(tp)
        out = _scalar(base, defs)
        for m in meta:
            if isinstance(m, Format):
                if m.fmt:
                    out["format"] = m.fmt
                if m.pattern:
                    out["pattern"] = m.pattern
            elif isinstance(m, Minimum):
                out["minimum"] = m.value
        return out
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        nullable = len(members) < len(get_args(tp))
        inner = _scalar(members[0], defs) if len(members) == 1 else {"anyOf": [_scalar(m, defs) for m in members]}
        return {"anyOf": [inner, {"type": "null"}]} if nullable else inner
    if origin is Literal:
        values = list(get_args(tp))
        return {"const": values[0]} if len(values) == 1 else {"enum": values}
    if origin is list:
        (item,) = get_args(tp)
        return {"type": "array"} if item is Any else {"type": "array", "items": _scalar(item, defs)}
    if origin is dict:
        return {"type": "object"}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        defs[tp.__name__] = _object(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    simple = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if tp in simple:
        return {"type": simple[tp]}
    raise TypeError(f"no JSON Schema mapping for {tp!r}")


def _object(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = get_type_hints(cls, include_extras=True)
    props: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        prop = _scalar(hints[f.name], defs)
        if "doc" in f.metadata:
            prop = {"description": f.metadata["doc"], **prop}
        props[f.name] = prop
    return {
        "type": "object",
        "properties": props,
        "required": [f.name for f in dataclasses.fields(cls)],
        "additionalProperties": False,
    }


def schema_for(cls: type | tuple[type, ...], topic: str, bundled: bool = False,
               single_too: bool = False) -> dict[str, Any]:
    """The topic's record: one `cls` object (or one of several, told apart by their `kind`), or
    (bundled) a JSON array of them, or (bundled and `single_too`) either."""
    defs: dict[str, Any] = {}
    if isinstance(cls, tuple):
        body: dict[str, Any] = {"oneOf": [_object(c, defs) for c in cls]}
        title = " | ".join(c.__name__ for c in cls)
        description = "one of: " + " ".join((c.__doc__ or "").strip() for c in cls)
    else:
        body, title, description = _object(cls, defs), cls.__name__, (cls.__doc__ or "").strip()
    out: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{topic}.schema.json",
        "title": f"{title} bundle" if bundled else title,
        "description": description,
        **({"type": "array", "items": body} if bundled else body),
    }
    assert bundled or not single_too, "single_too is for bundled topics"
    if single_too:
        assert "record" not in defs, "a record type named `record` would clash with the bundle's own"
        del out["type"], out["items"]
        out["title"] = f"{title}, or a bundle of them"
        defs["record"] = body
        out["oneOf"] = [{"type": "array", "items": {"$ref": "#/$defs/record"}}, {"$ref": "#/$defs/record"}]
    if defs:
        out["$defs"] = defs
    return out
