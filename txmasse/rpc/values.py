"""
Values against a command's schema: checking Python arguments before a call,
parsing C{NAME=VALUE} text from the command line by each argument's type,
and turning an answer into JSON.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from txmasse.rpc.schema import CommandSchema, Field, TypeSpec, typeName

_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _wrong(where: str, spec: TypeSpec, value: object) -> ValueError:
    return ValueError(f"{where} must be {typeName(spec)}, got {_shown(value)}")


def checkValue(spec: TypeSpec, value: object, where: str) -> None:
    """
    @raise ValueError: if C{value} is not what C{spec} carries.
    """
    if isinstance(spec, str):
        ok = {
            "Integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "Unicode": lambda v: isinstance(v, str),
            "String": lambda v: isinstance(v, bytes),
            "Boolean": lambda v: isinstance(v, bool),
            "Float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "Decimal": lambda v: isinstance(v, decimal.Decimal | int) and not isinstance(v, bool),
            "DateTime": lambda v: isinstance(v, datetime.datetime) and v.tzinfo is not None,
        }[spec](value)
        if not ok:
            raise _wrong(where, spec, value)
        return
    if not isinstance(value, list | tuple):
        raise _wrong(where, spec, value)
    if "ListOf" in spec:
        for i, item in enumerate(value):
            checkValue(spec["ListOf"], item, f"{where}[{i}]")
        return
    fields = tuple(Field(f[0], f[1], len(f) > 2) for f in spec["AmpList"])
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise _wrong(f"{where}[{i}]", spec, item)
        checkFields(fields, item, f"{where}[{i}]")


def checkFields(fields: Sequence[Field], values: Mapping[str, object], where: str) -> None:
    """
    @raise ValueError: naming a missing, unknown or ill-typed value.
    """
    names = {field.name for field in fields}
    for name in values:
        if name not in names:
            known = ", ".join(sorted(names)) or "none"
            raise ValueError(f"{where}: unknown argument {name!r} (arguments: {known})")
    for field in fields:
        if field.name not in values:
            if not field.optional:
                raise ValueError(
                    f"{where}: missing argument {field.name!r} ({typeName(field.type)})"
                )
            continue
        checkValue(field.type, values[field.name], f"{where}: argument {field.name!r}")


def checkArguments(schema: CommandSchema, arguments: Mapping[str, object]) -> None:
    checkFields(schema.arguments, arguments, schema.name)


# From the command line


def _fromJSON(spec: TypeSpec, value: Any, where: str) -> Any:
    if isinstance(spec, str):
        if spec in ("Unicode", "String", "DateTime", "Decimal") and isinstance(value, str):
            return parseText(spec, value, where)
        if spec in ("Integer", "Float", "Decimal") and isinstance(value, int | float):
            if not isinstance(value, bool):
                return parseText(spec, json.dumps(value), where)
        if spec == "Boolean" and isinstance(value, bool):
            return value
        raise _wrong(where, spec, value)
    if not isinstance(value, list):
        raise _wrong(where, spec, value)
    if "ListOf" in spec:
        return [_fromJSON(spec["ListOf"], item, f"{where}[{i}]") for i, item in enumerate(value)]
    fields = [Field(f[0], f[1], len(f) > 2) for f in spec["AmpList"]]
    rows = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _wrong(f"{where}[{i}]", spec, item)
        row = {
            f.name: _fromJSON(f.type, item[f.name], f"{where}[{i}].{f.name}")
            for f in fields
            if f.name in item
        }
        checkFields(fields, {**item, **row}, f"{where}[{i}]")
        rows.append(row)
    return rows


def parseText(spec: TypeSpec, text: str, where: str) -> Any:
    """
    The value C{text} stands for as C{spec}: a number, C{true}/C{false}, an
    ISO 8601 time with its offset, JSON for lists.

    @raise ValueError: naming C{where}, the type and the text.
    """
    if spec == "Unicode":
        return text
    if spec == "String":
        return text.encode("utf-8")
    try:
        if spec in ("Integer", "Float", "Decimal") and not text.isascii():
            raise ValueError("not ASCII")  # int() and float() read other scripts' digits too
        if spec == "Integer":
            return int(text)
        if spec == "Float":
            return float(text)
        if spec == "Decimal":
            return decimal.Decimal(text)
        if spec == "Boolean":
            return _BOOLEANS[text.lower()]
        if spec == "DateTime":
            when = datetime.datetime.fromisoformat(text)
            if when.tzinfo is None:
                raise ValueError("no UTC offset")
            return when
        return _fromJSON(spec, json.loads(text), where)
    except (ValueError, KeyError, decimal.InvalidOperation, RecursionError) as e:
        if isinstance(e, ValueError) and str(e).startswith(where):
            raise
        hint = " (JSON)" if isinstance(spec, dict) else ""
        raise ValueError(f"{where} must be {typeName(spec)}{hint}, got {_shown(text)}") from None


def parsePairs(schema: CommandSchema, pairs: Sequence[str]) -> dict[str, Any]:
    """
    C{NAME=VALUE} words to arguments of C{schema}, each parsed by its type.

    @raise ValueError: naming the bad word or argument.
    """
    arguments: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"argument {_shown(pair)} must be NAME=VALUE")
        field = schema.argument(name)
        if field is None:
            known = ", ".join(f.name for f in schema.arguments) or "none"
            raise ValueError(f"{schema.name}: unknown argument {name!r} (arguments: {known})")
        if name in arguments:
            raise ValueError(f"{schema.name}: argument {name!r} given twice")
        arguments[name] = parseText(field.type, text, f"{schema.name}: argument {name!r}")
    checkArguments(schema, arguments)
    return arguments


# To JSON


def toJSON(value: Any) -> Any:
    """
    An AMP value as JSON: bytes as text (undecodable bytes escaped),
    decimals as strings, times in ISO 8601, non-finite floats as strings.
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): toJSON(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [toJSON(v) for v in value]
    return value
