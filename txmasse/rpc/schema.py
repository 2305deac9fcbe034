"""
What an AMP peer answers, as data: each command's name, arguments, response
and error codes, with their AMP types.

A schema is built from L{Command<twisted.protocols.amp.Command>} classes
(or found on a protocol class from its C{Command.responder} declarations),
turned into compact JSON for a record's metadata, read back with every
part checked, and turned back into L{Command<twisted.protocols.amp.Command>}
classes a client can call with.
"""

from __future__ import annotations

import functools
import json
import keyword
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
from twisted.logger import Logger
from twisted.protocols import amp

from txmasse.records import MAX_METADATA_VALUE, validateName
from txmasse.rpc.errors import PublishedError, SchemaMismatch

log = Logger()

MAX_SCHEMA_BYTES = 8 * 1024
"""The most a published schema may take, as compact JSON."""

MAX_COMMANDS = 64
MAX_FIELDS = 32
MAX_DEPTH = 4

SCALARS: dict[str, type[amp.Argument]] = {
    "Integer": amp.Integer,
    "Unicode": amp.Unicode,
    "String": amp.String,
    "Boolean": amp.Boolean,
    "Float": amp.Float,
    "Decimal": amp.Decimal,
    "DateTime": amp.DateTime,
}
_SCALAR_NAMES = {kind: name for name, kind in SCALARS.items()}

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# A type is "Integer", {"ListOf": TYPE} or {"AmpList": [FIELD, ...]}.
TypeSpec = str | dict[str, Any]


class SchemaError(ValueError):
    """
    A schema (or a part of one) that cannot be published or trusted; the
    message names the part.
    """


@attrs.frozen
class Field:
    """
    One argument or response value: its name and AMP type.
    """

    name: str
    type: TypeSpec
    optional: bool = False

    def toJSON(self) -> list[Any]:
        return [self.name, self.type, True] if self.optional else [self.name, self.type]

    def describe(self) -> str:
        return f"{self.name}: {typeName(self.type)}{'?' if self.optional else ''}"


@attrs.frozen
class CommandSchema:
    """
    One command: what it takes, what it answers, which error codes it may
    answer with instead.
    """

    name: str
    arguments: tuple[Field, ...] = ()
    response: tuple[Field, ...] = ()
    errors: tuple[str, ...] = ()
    requiresAnswer: bool = True

    def toJSON(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "a": [f.toJSON() for f in self.arguments],
            "r": [f.toJSON() for f in self.response],
        }
        if self.errors:
            fields["e"] = list(self.errors)
        if not self.requiresAnswer:
            fields["n"] = True
        return fields

    def argument(self, name: str) -> Field | None:
        for field in self.arguments:
            if field.name == name:
                return field
        return None


def typeName(spec: TypeSpec) -> str:
    """
    A type as people write it: C{ListOf(Integer)}, C{AmpList(a: Integer)}.
    """
    if isinstance(spec, str):
        return spec
    if "ListOf" in spec:
        return f"ListOf({typeName(spec['ListOf'])})"
    inner = ", ".join(Field(f[0], f[1], len(f) > 2).describe() for f in spec["AmpList"])
    return f"AmpList({inner})"


# From Command classes


def _describeArgument(argument: object, where: str, depth: int = 0) -> TypeSpec:
    if depth > MAX_DEPTH:
        raise SchemaError(f"{where}: nested deeper than {MAX_DEPTH}")
    kind = type(argument)
    if kind in _SCALAR_NAMES:
        return _SCALAR_NAMES[kind]
    if kind is amp.ListOf:
        return {"ListOf": _describeArgument(argument.elementType, where, depth + 1)}  # type: ignore[attr-defined]
    if kind is amp.AmpList:
        subargs = argument.subargs  # type: ignore[attr-defined]
        return {"AmpList": [f.toJSON() for f in _describeFields(subargs, where, depth + 1)]}
    raise SchemaError(
        f"{where}: AMP type {kind.__name__} cannot be published "
        f"(known: {', '.join(SCALARS)}, ListOf, AmpList)"
    )


def _describeFields(
    fields: Iterable[tuple[bytes, amp.Argument]], where: str, depth: int = 0
) -> tuple[Field, ...]:
    described = []
    for wireName, argument in fields:
        name = wireName.decode("ascii", "replace")
        if _FIELD.fullmatch(name) is None or keyword.iskeyword(name):
            raise SchemaError(f"{where}: field name {name!r} is not a Python identifier")
        spec = _describeArgument(argument, f"{where} field {name!r}", depth)
        described.append(Field(name, spec, bool(getattr(argument, "optional", False))))
    return tuple(described)


def describeCommand(command: type[amp.Command]) -> CommandSchema:
    """
    The schema of one L{Command<twisted.protocols.amp.Command>} class.

    @raise SchemaError: when a name or type cannot be published.
    """
    if not (isinstance(command, type) and issubclass(command, amp.Command)):
        raise SchemaError(f"{command!r} is not an AMP Command class")
    name = command.commandName.decode("ascii", "replace")
    try:
        validateName(name, "command name")
    except ValueError as e:
        raise SchemaError(str(e)) from None
    where = f"command {name!r}"
    allErrors: Mapping[type, bytes] = getattr(command, "allErrors", {})
    errors = sorted({code.decode("ascii", "replace") for code in allErrors.values()})
    for code in errors:
        if _ERROR_CODE.fullmatch(code) is None:
            raise SchemaError(f"{where}: error code {code!r} cannot be published")
    return CommandSchema(
        name,
        _describeFields(command.arguments, f"{where} argument"),
        _describeFields(command.response, f"{where} response"),
        tuple(errors),
        bool(command.requiresAnswer),
    )


def respondedCommands(locator: type) -> list[type[amp.Command]]:
    """
    The commands a protocol class answers through C{Command.responder},
    found on the class (nothing is instantiated); AMP's own machinery
    (C{StartTLS}) left out.

    C{_commandDispatch} is where L{amp.CommandLocator}'s metaclass keeps
    what C{Command.responder} declared, inherited responders merged in.
    """
    if not (isinstance(locator, type) and issubclass(locator, amp.CommandLocator)):
        return []
    builtIn: Mapping[bytes, Any] = getattr(amp.AMP, "_commandDispatch", {})
    dispatch: Mapping[bytes, Any] = getattr(locator, "_commandDispatch", {})
    commands = []
    for name, (command, responder) in sorted(dispatch.items()):
        if name in builtIn and builtIn[name][1] is responder:
            continue
        commands.append(command)
    return commands


def describeCommands(commands: Iterable[type[amp.Command]], strict: bool = True) -> Schema:
    """
    The schema of C{commands}. With C{strict} (what a user declared), a
    command that cannot be published raises L{SchemaError}; without (what
    was found by looking), it is left out with a warning.
    """
    described: dict[str, CommandSchema] = {}
    for command in commands:
        try:
            schema = describeCommand(command)
        except SchemaError as e:
            if strict:
                raise
            log.warn("not publishing an AMP command: {error}", error=str(e))
            continue
        described[schema.name] = schema
    return Schema(described)


# The schema of a peer


@attrs.frozen
class Schema:
    """
    Every command a peer answers, by name.

    @ivar local: for a peer served by this process, the token that finds
        its factory (see L{txmasse.rpc.local}); published, meaningless to
        other processes.
    """

    commands: Mapping[str, CommandSchema]
    local: str | None = None

    def toJSON(self) -> str:
        if len(self.commands) > MAX_COMMANDS:
            raise SchemaError(f"{len(self.commands)} commands: at most {MAX_COMMANDS} publish")
        fields: dict[str, Any] = {
            "v": 1,
            "c": {name: command.toJSON() for name, command in sorted(self.commands.items())},
        }
        if self.local is not None:
            fields["p"] = self.local
        text = json.dumps(fields, separators=(",", ":"), sort_keys=True)
        if len(text) > MAX_SCHEMA_BYTES:
            raise SchemaError(
                f"the schema of {len(self.commands)} commands takes {len(text)} bytes, "
                f"over the {MAX_SCHEMA_BYTES} a record may publish"
            )
        return text

    @classmethod
    def fromJSON(cls, text: str) -> Schema:
        """
        Parse and check what L{toJSON} wrote.

        @raise SchemaError: naming the first bad part.
        """
        if len(text) > MAX_SCHEMA_BYTES:
            raise SchemaError(f"schema of {len(text)} bytes is over {MAX_SCHEMA_BYTES}")
        try:
            fields: Any = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise SchemaError(f"schema is not JSON: {e}") from None
        if (
            not isinstance(fields, dict)
            or fields.get("v") != 1
            or not set(fields)
            <= {
                "v",
                "c",
                "p",
            }
        ):
            raise SchemaError("schema must be an object {'v': 1, 'c': {...}}")
        commands = fields.get("c")
        if not isinstance(commands, dict) or len(commands) > MAX_COMMANDS:
            raise SchemaError(f"schema 'c' must map at most {MAX_COMMANDS} command names")
        local = fields.get("p")
        if local is not None and (
            not isinstance(local, str) or not re.fullmatch(r"[0-9a-f]{32}", local)
        ):
            raise SchemaError("schema 'p' must be 32 hex digits")
        return cls({name: _readCommand(name, body) for name, body in commands.items()}, local)


def _readCommand(name: object, body: object) -> CommandSchema:
    try:
        validateName(name, "command name")
    except ValueError as e:
        raise SchemaError(str(e)) from None
    where = f"command {name!r}"
    if not isinstance(body, dict) or not set(body) <= {"a", "r", "e", "n"}:
        raise SchemaError(f"{where}: must be an object with 'a', 'r' and maybe 'e', 'n'")
    errors = body.get("e", [])
    if not isinstance(errors, list) or not all(
        isinstance(code, str) and _ERROR_CODE.fullmatch(code) for code in errors
    ):
        raise SchemaError(f"{where}: 'e' must be a list of error codes")
    answer = body.get("n", False)
    if not isinstance(answer, bool):
        raise SchemaError(f"{where}: 'n' must be true or false")
    return CommandSchema(
        str(name),
        _readFields(body.get("a"), f"{where} arguments"),
        _readFields(body.get("r"), f"{where} response"),
        tuple(errors),
        not answer,
    )


def _readFields(fields: object, where: str, depth: int = 0) -> tuple[Field, ...]:
    if not isinstance(fields, list) or len(fields) > MAX_FIELDS:
        raise SchemaError(f"{where}: must be a list of at most {MAX_FIELDS} fields")
    read = []
    seen = set()
    for item in fields:
        if not isinstance(item, list) or len(item) not in (2, 3) or item[2:] not in ([], [True]):
            raise SchemaError(f"{where}: each field must be [NAME, TYPE] or [NAME, TYPE, true]")
        name = item[0]
        if not isinstance(name, str) or _FIELD.fullmatch(name) is None or keyword.iskeyword(name):
            raise SchemaError(f"{where}: field name {name!r} is not a Python identifier")
        if name in seen:
            raise SchemaError(f"{where}: field {name!r} given twice")
        seen.add(name)
        read.append(
            Field(name, _readType(item[1], f"{where} field {name!r}", depth), len(item) == 3)
        )
    return tuple(read)


def _readType(spec: object, where: str, depth: int = 0) -> TypeSpec:
    if depth > MAX_DEPTH:
        raise SchemaError(f"{where}: nested deeper than {MAX_DEPTH}")
    if isinstance(spec, str):
        if spec not in SCALARS:
            raise SchemaError(
                f"{where}: unknown type {spec[:40]!r} "
                f"(known: {', '.join(SCALARS)}, ListOf, AmpList)"
            )
        return spec
    if isinstance(spec, dict) and len(spec) == 1:
        if "ListOf" in spec:
            return {"ListOf": _readType(spec["ListOf"], where, depth + 1)}
        if "AmpList" in spec:
            fields = _readFields(spec["AmpList"], where, depth + 1)
            return {"AmpList": [f.toJSON() for f in fields]}
    raise SchemaError(f"{where}: a type must be a name, {{'ListOf': T}} or {{'AmpList': [...]}}")


# Back to Command classes


def _argument(spec: TypeSpec, optional: bool = False) -> amp.Argument:
    if isinstance(spec, str):
        return SCALARS[spec](optional=optional)
    if "ListOf" in spec:
        return amp.ListOf(_argument(spec["ListOf"]), optional=optional)
    return amp.AmpList(_wireFields(_readFields(spec["AmpList"], "AmpList")), optional=optional)


def _wireFields(fields: Sequence[Field]) -> list[tuple[bytes, amp.Argument]]:
    return [(f.name.encode("ascii"), _argument(f.type, f.optional)) for f in fields]


class PublishedCommand(amp.Command):
    """
    The base of commands built from a published schema (C{published}): an
    answer that does not fit it fails with L{SchemaMismatch} naming the
    field, not with whatever the AMP type's parser raises.
    """

    published: CommandSchema

    @classmethod
    def parseResponse(cls, box: Any, protocol: Any) -> Any:
        try:
            return super().parseResponse(box, protocol)
        except Exception as e:
            problem = f"({e!r})"
        for field, (wireName, argument) in zip(cls.published.response, cls.response, strict=True):
            try:
                argument.fromBox(wireName, dict(box), {}, protocol)
            except Exception as e:
                problem = f"response {field.name!r} is not {typeName(field.type)} ({e!r})"
                break
        raise SchemaMismatch(
            f"the answer to {cls.published.name} does not fit its published schema: {problem}"
        )


def commandFromSchema(schema: CommandSchema) -> type[PublishedCommand]:
    """
    A L{Command<twisted.protocols.amp.Command>} class that calls
    C{schema}'s command as published. A published error code arrives as a
    L{PublishedError} (its C{code} set), any other as
    L{amp.UnknownRemoteError<twisted.protocols.amp.UnknownRemoteError>},
    each with the peer's message.
    """
    attributes = {
        "commandName": schema.name.encode("ascii"),
        "arguments": _wireFields(schema.arguments),
        "response": _wireFields(schema.response),
        "requiresAnswer": schema.requiresAnswer,
        "errors": {errorClass(code): code.encode("ascii") for code in schema.errors},
        "published": schema,
    }
    return type(f"Published_{schema.name}", (PublishedCommand,), attributes)


@functools.cache
def errorClass(code: str) -> type[PublishedError]:
    """
    The exception a published error code arrives as (one class per code).
    """
    return type(code, (PublishedError,), {"code": code})


# In a record's metadata

METADATA_KEY = "amp.commands"
_CHUNK = MAX_METADATA_VALUE  # the most one metadata value may hold
_MAX_CHUNKS = MAX_SCHEMA_BYTES // _CHUNK


def schemaMetadata(schema: Schema) -> dict[str, str]:
    """
    The metadata that publishes C{schema}: its JSON under C{amp.commands},
    continued under C{amp.commands.1}, C{.2}... when longer than one
    metadata value may be.
    """
    text = schema.toJSON()
    chunks = [text[i : i + _CHUNK] for i in range(0, len(text), _CHUNK)] or [""]
    return {
        (METADATA_KEY if i == 0 else f"{METADATA_KEY}.{i}"): chunk for i, chunk in enumerate(chunks)
    }


def isSchemaKey(key: str) -> bool:
    return key == METADATA_KEY or key.startswith(METADATA_KEY + ".")


def readSchema(metadata: Mapping[str, str]) -> Schema | None:
    """
    The schema published in C{metadata}, or C{None} if there is none.

    @raise SchemaError: naming what is wrong with it.
    """
    if METADATA_KEY not in metadata:
        if any(isSchemaKey(key) for key in metadata):
            raise SchemaError(f"schema continued without its first part {METADATA_KEY!r}")
        return None
    parts = [metadata[METADATA_KEY]]
    while f"{METADATA_KEY}.{len(parts)}" in metadata:
        if len(parts) >= _MAX_CHUNKS:
            raise SchemaError(f"schema is in more than {_MAX_CHUNKS} parts")
        parts.append(metadata[f"{METADATA_KEY}.{len(parts)}"])
    expected = {METADATA_KEY} | {f"{METADATA_KEY}.{i}" for i in range(1, len(parts))}
    stray = sorted(key for key in metadata if isSchemaKey(key) and key not in expected)
    if stray:
        raise SchemaError(f"schema part {stray[0]!r} does not follow the parts before it")
    return Schema.fromJSON("".join(parts))
