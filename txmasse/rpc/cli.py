"""
C{masse providers}, C{masse describe} and C{masse call}: discovery and calls
by URI from a shell. L{txmasse.cli} declares these subcommands with the
argument functions below (the global options, C{--ns} and C{--timeout}
among them, and C{--json}/C{--jsonl}, come from it) and runs them with
L{run}.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import provider

from txmasse.checks import checkNumber
from txmasse.cli import UsageError, printJSON
from txmasse.errors import PeerNotFound
from txmasse.records import PeerRecord, validateName
from txmasse.registry import IRegistry
from txmasse.rpc.calls import RPC, describe, findProviders, who
from txmasse.rpc.errors import PublishedError, RemoteCallFailed
from txmasse.rpc.schema import CommandSchema, Schema
from txmasse.rpc.uri import parseURI
from txmasse.rpc.values import parsePairs, toJSON

COMMANDS = ("providers", "describe", "call")


def providersArguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("commandName", metavar="COMMAND", help="AMP command name")


def describeArguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")


def callArguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("uri", metavar="URI", help="masse://NS/PEER/COMMAND (PEER may be a glob)")
    parser.add_argument("arguments", nargs="*", metavar="NAME=VALUE")
    parser.add_argument("--all", action="store_true", help="call every match, one JSON line each")
    parser.add_argument("--pick", default="random", choices=["random", "first", "roundrobin"])


@contextmanager
def _warningsTo(out: TextIO) -> Iterator[None]:
    """
    Warnings of this package (a schema skipped as garbage) on stderr, one
    line each, while a subcommand runs.
    """

    @provider(ILogObserver)
    def observer(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if str(event.get("log_namespace", "")).startswith("txmasse.rpc") and level in (
            LogLevel.warn,
            LogLevel.error,
            LogLevel.critical,
        ):
            text = (formatEvent(event) or "").replace("\n", " ")
            print(f"masse: warning: {text}", file=out, flush=True)

    globalLogPublisher.addObserver(observer)
    try:
        yield
    finally:
        globalLogPublisher.removeObserver(observer)


async def run(
    reactor: Any, registry: IRegistry, namespace: str, args: Any, out: TextIO, err: TextIO
) -> None:
    """
    Run one RPC subcommand.

    @raise UsageError: for bad arguments (exit status 2).
    @raise txmasse.MasseError: when the registry or a peer fails (exit
        status 1), after C{call --all} printed every answer.
    """
    with _warningsTo(err):
        if args.command == "providers":
            await _providers(registry, namespace, args, out)
        elif args.command == "describe":
            await _describe(registry, namespace, args, out)
        else:
            await _call(reactor, registry, args, out, err)


def _commandLine(schema: CommandSchema) -> str:
    arguments = ", ".join(field.describe() for field in schema.arguments)
    response = ", ".join(field.describe() for field in schema.response)
    line = f"{schema.name}({arguments}) -> ({response})"
    if schema.errors:
        line += f" errors: {', '.join(schema.errors)}"
    if not schema.requiresAnswer:
        line += " (no answer)"
    return line


def _recordJSON(record: PeerRecord) -> dict[str, Any]:
    return {
        "namespace": record.namespace,
        "name": record.name,
        "instance": record.instance,
        "endpoints": list(record.endpoints),
    }


async def _providers(registry: IRegistry, namespace: str, args: Any, out: TextIO) -> None:
    try:
        validateName(args.commandName, "command name")
    except ValueError as e:
        raise UsageError(str(e)) from None
    found = await findProviders(registry, namespace, args.commandName)
    if args.format is not None:
        items = [{**_recordJSON(record), "command": schema.toJSON()} for record, schema in found]
        printJSON(items, args.format, out)
        return
    for record, _ in found:
        print(f"{record.name}  {record.instance}  {' '.join(record.endpoints)}", file=out)


async def _describe(registry: IRegistry, namespace: str, args: Any, out: TextIO) -> None:
    described: list[tuple[PeerRecord, Schema | None]] = await describe(
        registry, namespace, args.name
    )
    if not described:
        raise PeerNotFound(
            f"no live instance of {args.name!r} in namespace {namespace!r} "
            f"of registry {registry.url}"
        )
    if args.format is not None:
        items = [
            {
                **_recordJSON(record),
                "commands": {command.name: command.toJSON() for command in _sorted(schema)},
            }
            for record, schema in described
        ]
        printJSON(items, args.format, out)
        return
    for record, schema in described:
        commands = _sorted(schema)
        print(f"{record.namespace}/{record.name} instance {record.instance}", file=out)
        if not commands:
            print("  (publishes no AMP commands)", file=out)
        for command in commands:
            print(f"  {_commandLine(command)}", file=out)


def _sorted(schema: Schema | None) -> list[CommandSchema]:
    return [] if schema is None else sorted(schema.commands.values(), key=lambda c: c.name)


def _remoteMessage(failure: Failure) -> str:
    error = failure.value
    if isinstance(error, PublishedError):
        return f"{error.code}: {error}"
    if isinstance(error, amp.RemoteAmpError):
        code = error.errorCode.decode("ascii", "backslashreplace")
        return f"{code}: {error.description}"
    if isinstance(error, amp.TooLong):  # its message is empty
        return "a value is too long for AMP (at most 65,535 bytes)"
    return failure.getErrorMessage() or type(error).__name__


async def _call(reactor: Any, registry: IRegistry, args: Any, out: TextIO, err: TextIO) -> None:
    try:
        uri = parseURI(args.uri)
        for pair in args.arguments:  # the shape now; the values once the schema is known
            if not pair.partition("=")[0] or "=" not in pair:
                raise ValueError(f"argument {pair!r} must be NAME=VALUE")
        checkNumber(args.timeout, f"--timeout {args.timeout}:", low=0, above=True)
    except ValueError as e:
        raise UsageError(str(e)) from None
    rpc = RPC(registry, reactor, pick=args.pick, timeout=args.timeout)
    targets = await rpc.targets(uri)
    try:
        # Every provider's schema must accept the arguments; the first's parses them.
        schemas = [target.schema for target in targets if target.schema is not None]
        arguments = parsePairs(schemas[0], args.arguments)
        for schema in schemas[1:]:
            parsePairs(schema, args.arguments)
    except ValueError as e:
        raise UsageError(f"{uri}: {e}") from None
    if not args.all:
        try:
            answer = await rpc.call(str(uri), **arguments)
        except (amp.AmpError, PublishedError) as e:
            raise RemoteCallFailed(f"{uri}: {_remoteMessage(Failure(e))}") from None
        print(json.dumps(toJSON(answer), sort_keys=True), file=out)
        return
    answers = await rpc.callAll(str(uri), **arguments)
    failed = 0
    for record, outcome in sorted(answers.items(), key=lambda item: item[0].name):
        line: dict[str, Any] = {"peer": record.name, "instance": record.instance}
        if isinstance(outcome, Failure):
            line["error"] = _remoteMessage(outcome)
            failed += 1
            print(f"masse: {uri}: {who(record)}: {line['error']}", file=err)
        else:
            line["response"] = toJSON(outcome)
        print(json.dumps(line, sort_keys=True), file=out, flush=True)
    if failed:
        raise RemoteCallFailed(f"{uri}: {failed} of {len(answers)} providers failed")
