"""The JSON side of the records: values to and from dataclasses, and the generated JSON Schema.

``docs/benchmark.schema.json`` is :func:`json_schema` ``()`` of :class:`.records.Report`;
``python -m max_whisper.bench.schema --write`` rewrites it, and a test checks the
committed file against it.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from ..config import PROJECT_ROOT
from .records import Report

SCHEMA_PATH = PROJECT_ROOT / "docs" / "benchmark.schema.json"


def json_schema(root: type = Report) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of ``root`` and every record it holds."""
    defs: dict[str, Any] = {}
    body = _object_schema(root, defs)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:max-whisper:benchmark-report:2",
        "title": "max-whisper benchmark report",
        **body,
        "$defs": dict(sorted(defs.items())),
    }


def schema_text() -> str:
    """The schema as the committed file holds it (two-space indent, final newline)."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def _type_schema(kind: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if kind is Any:
        return {}
    if origin in (Union, types.UnionType):
        return {"anyOf": [_type_schema(a, defs) for a in args]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (list, list):
        return {"type": "array", "items": _type_schema(args[0], defs)}
    if origin in (tuple, tuple):
        return {"type": "array", "items": _type_schema(args[0], defs)}
    if origin in (dict, dict):
        return {"type": "object", "additionalProperties": _type_schema(args[1], defs)}
    if dataclasses.is_dataclass(kind):
        if kind.__name__ not in defs:
            defs[kind.__name__] = {}  # placeholder: records may refer to themselves
            defs[kind.__name__] = _object_schema(kind, defs)
        return {"$ref": f"#/$defs/{kind.__name__}"}
    if kind is type(None):
        return {"type": "null"}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if kind in simple:
        return {"type": simple[kind]}
    raise TypeError(f"no JSON Schema for {kind!r}")


def _object_schema(kind: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(kind)
    properties = {}
    for f in dataclasses.fields(kind):
        prop = _type_schema(hints[f.name], defs)
        prop.update(f.metadata.get("schema", {}))
        properties[f.name] = prop
    schema: dict[str, Any] = {"type": "object"}
    doc = inspect.getdoc(kind)
    if doc and not doc.startswith(f"{kind.__name__}("):  # dataclasses invent a signature when there is no docstring
        schema["description"] = " ".join(doc.split())
    schema.update(
        required=[f.name for f in dataclasses.fields(kind)], properties=properties, additionalProperties=False
    )
    return schema


def to_jsonable(record: Any) -> Any:
    """A dataclass record as plain JSON values (dicts, lists, numbers, strings, None)."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: to_jsonable(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, (list, tuple)):
        return [to_jsonable(v) for v in record]
    if isinstance(record, dict):
        return {str(k): to_jsonable(v) for k, v in record.items()}
    return record


def from_jsonable(kind: Any, value: Any) -> Any:
    """The inverse of :func:`to_jsonable` for the type ``kind`` (a record class or a typing form)."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if kind is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        for arm in arms:
            if _fits(arm, value):
                return from_jsonable(arm, value)
        raise ValueError(f"{value!r:.80} fits none of {arms}")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{value!r} is not one of {args}")
        return value
    if origin in (list, list):
        return [from_jsonable(args[0], v) for v in value]
    if origin in (tuple, tuple):
        return tuple(from_jsonable(args[0], v) for v in value)
    if origin in (dict, dict):
        return {k: from_jsonable(args[1], v) for k, v in value.items()}
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        names = {f.name for f in dataclasses.fields(kind) if f.init}
        unknown = set(value) - names
        if unknown:
            raise ValueError(f"{kind.__name__} has no field(s) {sorted(unknown)}")
        return kind(**{k: from_jsonable(hints[k], v) for k, v in value.items()})
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    wrong_type = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
    if kind in (int, float, str, bool) and wrong_type:
        raise ValueError(f"expected {kind.__name__}, got {value!r:.80}")
    return value


def _fits(kind: Any, value: Any) -> bool:
    """Whether ``value`` can be read as ``kind`` (a record class fits a dict with exactly its field names)."""
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            return False
        required = {
            f.name
            for f in dataclasses.fields(kind)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        return required <= set(value) <= {f.name for f in dataclasses.fields(kind)}
    try:
        from_jsonable(kind, value)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


def write_schema(path: Path = SCHEMA_PATH) -> None:
    Path(path).write_text(schema_text(), encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_schema()
    else:
        sys.stdout.write(schema_text())
