"""
The C{masse} command: look into a registry from a shell, watch it, and
reach or register peers by name.

Exit status: 0 on success, 1 when the registry or the peer fails us, 2 for
bad arguments. Errors are one line on stderr, never a traceback.

Adding a subcommand: write its C{arguments(parser)} and an C{async
run(context, args)}, and add a L{Command} to L{COMMANDS}. The global options
(L{GLOBAL_OPTIONS}) are accepted before and after every subcommand;
C{jsonOutput} gives it C{--json} (one JSON document) and C{--jsonl} (JSON
Lines), read back as C{args.format}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn, TextIO

import attrs
from twisted.internet import task
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ReactorNotRunning
from twisted.internet.protocol import Factory
from twisted.logger import (
    FilteringLogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
    globalLogPublisher,
    textFileLogObserver,
)

from txmasse.checks import checkNumber, isDigits, shown
from txmasse.errors import MasseError, PeerNotFound
from txmasse.health import drainDecidedElsewhere, withDrainOf
from txmasse.health_cli import addMetaFilter, matches, metaConditions, stateJSON
from txmasse.records import Glob, PeerRecord, validateName
from txmasse.registry import (
    ILease,
    IRegistry,
    LeaseStatus,
    PeerEvent,
    defaultNamespace,
    defaultRegistryURL,
    parseRegistryURL,
    registryFromURL,
)
from txmasse.registry.signed import SignedRegistry

DEFAULT_TIMEOUT = 10.0
SHELLS = ("bash", "zsh", "fish", "tcsh")

log = Logger()


class UsageError(Exception):
    """
    Bad arguments: exit status 2.
    """


@attrs.define
class Context:
    """
    What a subcommand runs with: the checked global options, the registry
    (opened for commands that need one) and where to print.
    """

    reactor: Any
    namespace: str
    timeout: float
    out: TextIO
    url: str
    _registry: IRegistry | None = None

    @property
    def registry(self) -> IRegistry:
        if self._registry is None:
            raise RuntimeError("this command opened no registry")
        return self._registry

    def deadline(self, d: Deferred[Any], what: str) -> Deferred[Any]:
        """
        C{d}, failing with a L{MasseError} naming C{what} if it has not
        fired within the C{--timeout}.
        """

        def late(failure: Any) -> None:
            failure.trap(TimeoutError)
            raise MasseError(f"{what}: no answer within {self.timeout:g}s (--timeout)")

        return d.addTimeout(self.timeout, self.reactor).addErrback(late)


_WARNINGS = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)

_SHOWN = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
_SHOWN.setLogLevelForNamespace("txmasse.registry._outage", LogLevel.info)
"""What a command that runs until stopped shows: warnings, and an outage's end."""


@attrs.define
class _HeldWarnings:
    """
    The warnings logged while a command runs (garbage skipped in the
    store, say), held back: shown once it succeeds, or as they come once a
    command that runs until stopped is up (L{logWarnings}); a failure's
    one line says enough.
    """

    events: list[LogEvent] = attrs.field(factory=list)
    observer: FilteringLogObserver | None = None

    def hold(self) -> None:
        keep: Any = self.events.append  # any callable of one event is an observer
        self.observer = FilteringLogObserver(keep, [_WARNINGS])
        globalLogPublisher.addObserver(self.observer)

    def release(self) -> list[LogEvent]:
        if self.observer is not None:
            globalLogPublisher.removeObserver(self.observer)
            self.observer = None
        events, self.events = self.events, []
        return events


_held = _HeldWarnings()


def logWarnings() -> None:
    """
    From now on, show warnings (a registry outage, garbage skipped in the
    store) and an outage's end on stderr, those held back so far first:
    for the commands that run until stopped, once they are up, so a
    failure to start stays one line.
    """
    _held.release()  # the log's own buffer replays them to the new observer
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [_SHOWN])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


@attrs.frozen
class Command:
    """
    One subcommand of C{masse}.

    @ivar arguments: adds the subcommand's own arguments to its parser.
    @ivar run: does the work.
    @ivar needsRegistry: whether the registry is opened for it.
    @ivar jsonOutput: whether it takes C{--json} and C{--jsonl}.
    """

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Context, Any], Awaitable[None]]
    needsRegistry: bool = True
    jsonOutput: bool = False
    description: str | None = None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


GLOBAL_OPTIONS: dict[str, Any] = {"registry": None, "ns": None, "timeout": None}


class _MainParser(_Parser):
    """
    The top-level parser. Global options have no default on any parser (so
    a subcommand's parser never overwrites what was given before it); the
    defaults are filled in here, once everything is parsed.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extra = super().parse_known_args(args, namespace)
        for option, default in GLOBAL_OPTIONS.items():
            if not hasattr(parsed, option):
                setattr(parsed, option, default)
        return parsed, extra

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> argparse.Namespace:
        # The command is checked here, not by argparse, which would say it
        # is missing before naming an unknown option given in its place.
        given = list(sys.argv[1:] if args is None else args)
        try:
            parsed, extra = self.parse_known_args(given, namespace)
            trailing = getattr(parsed, "arguments", None)  # masse call's NAME=VALUE...
            if extra and isinstance(trailing, list) and not any(e.startswith("-") for e in extra):
                # argparse takes a command's positionals in one run: those after
                # an option (a global one, say) are the rest of that run.
                trailing.extend(extra)
                extra = []
            if extra:
                self.error(f"unrecognized arguments: {' '.join(extra)}")
            if parsed.command is None:
                self.error("the following arguments are required: COMMAND")
        except UsageError as e:
            raise UsageError(_pointed(str(e), given)) from None
        return parsed


def _pointed(message: str, given: Sequence[str]) -> str:
    """
    An error about C{given} that points at the help of the command given.
    """
    names = {command.name for command in COMMANDS}
    command = next((arg for arg in given if arg in names), None)
    if command is not None:
        message = message.replace("(see masse --help)", f"(see masse {command} --help)")
    return message


def _globalOptions() -> _Parser:
    """
    The options every subcommand takes, before or after its name.
    """
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("global options (before or after the command)")
    group.add_argument(
        "--registry",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="registry URL (default $MASSE_REGISTRY, else redis://127.0.0.1:6379/0)",
    )
    group.add_argument(
        "--ns",
        metavar="NAMESPACE",
        default=argparse.SUPPRESS,
        help="namespace (default $MASSE_NAMESPACE, else default)",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        default=argparse.SUPPRESS,
        help=(
            "deadline for reaching the registry, and for connect the peer "
            f"(default $MASSE_TIMEOUT, else {DEFAULT_TIMEOUT:g})"
        ),
    )
    return parent


def _parser() -> argparse.ArgumentParser:
    from txmasse import __version__

    parent = _globalOptions()
    parser = _MainParser(
        prog="masse",
        description="Look into a txmasse registry, and reach peers by name.",
        epilog="Full reference: docs/cli.md. Exit status 0, 1 (registry or peer failed), "
        "2 (bad arguments).",
        parents=[parent],
    )
    parser.add_argument("--version", action="version", version=f"masse (txmasse) {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser
    )
    for command in COMMANDS:
        sub = commands.add_parser(
            command.name,
            help=command.help,
            description=command.description or command.help,
            parents=[parent],
        )
        command.arguments(sub)
        if command.jsonOutput:
            formats = sub.add_mutually_exclusive_group()
            formats.add_argument(
                "--json",
                dest="format",
                action="store_const",
                const="json",
                help="one JSON document (an array)",
            )
            formats.add_argument(
                "--jsonl",
                dest="format",
                action="store_const",
                const="jsonl",
                help="JSON Lines: one JSON object a line",
            )
    return parser


# Output


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _recordJSON(record: PeerRecord) -> dict[str, Any]:
    return {
        "namespace": record.namespace,
        "name": record.name,
        "instance": record.instance,
        "endpoints": list(record.endpoints),
        "metadata": dict(record.metadata),
        "host": record.host,
        "registered": record.registered,
        **stateJSON(record),
    }


def printJSON(items: list[dict[str, Any]], format: str, out: TextIO) -> None:
    """
    C{items} as one JSON array (C{json}) or one object a line (C{jsonl}):
    what C{--json} and C{--jsonl} print.
    """
    if format == "json":
        print(json.dumps(items, sort_keys=True, indent=2), file=out)
    else:
        for item in items:
            print(json.dumps(item, sort_keys=True), file=out)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


# ls


def _lsArguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="name glob (default *)")
    parser.add_argument(
        "--all",
        action="store_true",
        help="also the records a signed namespace ignores, flagged, and how many",
    )
    addMetaFilter(parser)


async def listPeers(context: Context, args: Any) -> None:
    registry, namespace = context.registry, context.namespace
    if args.all:
        await listAll(context, args)
        return
    statuses: list[LeaseStatus] = await context.deadline(
        registry.leases(namespace, args.pattern), "ls"
    )
    meta = metaConditions(args.meta)
    statuses = [status for status in statuses if matches(status.record, meta)]
    _printLeases([(status, None) for status in statuses], args, context.out)


async def listAll(context: Context, args: Any) -> None:
    """
    C{masse ls --all}: every lease, each with why a signed namespace
    ignores it (or C{ok}), then how many it ignores.
    """
    registry, namespace, out = context.registry, context.namespace, context.out
    signed = isinstance(registry, SignedRegistry) and registry.signs(namespace)
    if isinstance(registry, SignedRegistry):
        checked = await context.deadline(registry.audit(namespace, args.pattern), "ls --all")
    else:
        leases = await context.deadline(registry.leases(namespace, args.pattern), "ls --all")
        checked = [(status, None) for status in leases]
    _printLeases(checked, args, out, status="ok" if signed else "unsigned")
    if args.format is None:
        rejected = sum(problem is not None for _, problem in checked)
        if signed:
            print(f"rejected in namespace {namespace}: {rejected}", file=out)
        else:
            print(f"namespace {namespace} is not signed", file=out)


def _printLeases(
    checked: list[tuple[LeaseStatus, str | None]],
    args: Any,
    out: TextIO,
    status: str | None = None,
) -> None:
    """
    The table (or JSON) of C{masse ls}; with C{status}, a STATUS column says
    which leases are rejected and why (C{status} for the rest).
    """
    checked = sorted(checked, key=lambda c: (c[0].record.name, c[0].record.registered))
    now = time.time()
    if args.format is not None:
        items = []
        for lease, problem in checked:
            item = {**_recordJSON(lease.record), "expiresIn": round(lease.expiresIn, 3)}
            if status is not None:
                item["rejected"] = problem
            items.append(item)
        printJSON(items, args.format, out)
        return
    rows = [["NAME", "INSTANCE", "ENDPOINTS", "AGE", "LEFT", "HEALTH", "METADATA"]]
    if status is not None:
        rows[0].append("STATUS")
    for lease, problem in checked:
        record = lease.record
        rows.append(
            [
                record.name,
                record.instance[:12],
                " ".join(record.endpoints),
                _age(now - record.registered),
                f"{lease.expiresIn:.1f}s",
                record.state,
                _metadataShown(record.metadata),
            ]
        )
        if status is not None:
            rows[-1].append(status if problem is None else f"REJECTED: {problem}")
    print(_table(rows), file=out)


# watch


def _watchArguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="name glob (default *)")
    parser.add_argument(
        "--no-initial",
        dest="initial",
        action="store_false",
        help="do not print the members already there (kind present) first",
    )
    parser.add_argument(
        "--json", "--jsonl", dest="json", action="store_true", help="one JSON object a line"
    )


def _eventLine(kind: str, record: PeerRecord, source: str | None, asJSON: bool) -> str:
    if asJSON:
        line = {"time": time.time(), "kind": kind, "record": _recordJSON(record)}
        if source is not None:
            line["source"] = source
        return json.dumps(line, sort_keys=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    shownSource = f" from {source}" if source is not None else ""
    return (
        f"{stamp}Z {kind:<8} {record.namespace}/{record.name} "
        f"{record.instance[:12]} {' '.join(record.endpoints)}{shownSource}"
        f"{'' if source is not None else ' ' + record.state}"
    )


async def watchPeers(context: Context, args: Any) -> None:
    """
    C{masse watch}: the current members first (kind C{present}), then every
    change, like C{kubectl get -w}.
    """
    out = context.out
    early: list[PeerEvent] = []
    started = False

    def show(event: PeerEvent) -> None:
        if not started:
            early.append(event)  # the watch's first view includes it
            return
        print(_eventLine(str(event.kind), event.record, event.source, args.json), file=out)
        out.flush()

    subscription = await context.deadline(
        context.registry.watch(context.namespace, args.pattern, show, usage=True), "watch"
    )
    if args.initial:
        for record in sorted(subscription.peers, key=lambda r: (r.name, r.registered)):
            print(_eventLine("present", record, None, args.json), file=out)
    started = True
    for event in early:
        if event.source is not None:  # stream use is not in the view: pass it on
            show(event)
    out.flush()
    logWarnings()
    await Deferred()  # until Ctrl-C stops the reactor


# resolve


def _resolveArguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    addMetaFilter(parser)


async def resolve(context: Context, args: Any) -> None:
    registry, namespace = context.registry, context.namespace
    validateName(args.name, "name")
    records = await context.deadline(registry.lookup(namespace, args.name), "resolve")
    meta = metaConditions(args.meta)
    if records and meta and not any(matches(record, meta) for record in records):
        shown = " ".join(f"--meta {key}={value}" for key, value in meta)
        raise PeerNotFound(
            f"{shown} matched none of the {len(records)} instance(s) of {args.name!r} "
            f"in namespace {namespace!r} of registry {registry.url}"
        )
    records = [record for record in records if matches(record, meta)]
    if not records:
        raise PeerNotFound(
            f"no live instance of {args.name!r} in namespace {namespace!r} "
            f"of registry {registry.url}"
        )
    records = sorted(records, key=lambda r: r.registered)
    if args.format is not None:
        printJSON([_recordJSON(record) for record in records], args.format, context.out)
        return
    for record in records:
        for endpoint in record.endpoints:
            print(endpoint, file=context.out)


# connect


def _connectArguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a name, or a glob for any one matching peer")
    closing = parser.add_mutually_exclusive_group()
    closing.add_argument(
        "--wait",
        metavar="SECONDS",
        type=float,
        default=1.0,
        help="after end of input, keep reading until the peer closes or sends nothing "
        "for this long (like nc -q; default 1)",
    )
    closing.add_argument(
        "--half-close",
        action="store_true",
        help="at end of input, half-close and wait for the peer to close (like nc -N)",
    )
    parser.add_argument(
        "--ca", metavar="PEM", help="connect only over TLS, verified against this CA"
    )
    parser.add_argument(
        "--cert", metavar="PEM", help="client certificate over TLS (and its key, unless --key)"
    )
    parser.add_argument("--key", metavar="PEM", help="the client certificate's key")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="connect only over TLS, verified against the system trust roots",
    )


async def connect(context: Context, args: Any) -> None:
    from txmasse._cli_connect import Relay, relayStandardIO
    from txmasse.endpoints import MasseClientEndpoint
    from txmasse.peertls import tlsFromOptions
    from txmasse.pem import FLAGS

    try:
        checkNumber(args.wait, f"--wait {shown(args.wait)}:", low=0)
    except ValueError as e:
        raise UsageError(str(e)) from None
    options = {key: getattr(args, key) for key in ("cert", "key", "ca") if getattr(args, key)}
    if args.tls:
        options["tls"] = "true"
    try:
        tls = tlsFromOptions(options, server=False, spelling=FLAGS)
    except ValueError as e:
        raise UsageError(str(e)) from None
    endpoint = MasseClientEndpoint(
        context.reactor,
        args.name,
        namespace=context.namespace,
        registry=context.registry,
        timeout=context.timeout,
        tls=tls,
    )
    relay = Relay(context.reactor, args.wait, args.half_close)
    await endpoint.connect(Factory.forProtocol(lambda: relay.remote))
    await relayStandardIO(context.reactor, relay)


# register


def _registerArguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument(
        "--endpoint",
        action="append",
        required=True,
        metavar="DESC",
        help="client endpoint description, e.g. tcp:host=10.0.0.7:port=8080 (repeatable)",
    )
    parser.add_argument("--ttl", type=float, default=10.0, help="lease seconds (default 10)")
    parser.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata (repeatable)"
    )


def _metadataShown(metadata: Mapping[str, str]) -> str:
    """
    Metadata as C{masse ls} shows it: C{KEY=VALUE} each; a published AMP
    schema (see L{txmasse.rpc}) as the names of its commands.
    """
    from txmasse.rpc.schema import isSchemaKey, readSchema

    shown = [f"{k}={v}" for k, v in sorted(metadata.items()) if not isSchemaKey(k)]
    if any(isSchemaKey(key) for key in metadata):
        try:
            schema = readSchema(metadata)
        except ValueError:
            schema = None
        commands = "?" if schema is None else ",".join(sorted(schema.commands))
        shown.append(f"amp.commands={commands}")
    return " ".join(shown)


def _metadata(pairs: Sequence[str]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--meta {pair!r}: must be KEY=VALUE")
        metadata[key] = value
    return metadata


def _checkEndpoint(description: str) -> None:
    """
    Refuse an C{--endpoint} no client could connect with: a C{tcp:} or
    C{ssl:} one without a host or a port from 1 to 65535, a C{unix:} one
    without a path, a C{tls:} one clients would refuse, C{masse:} (never
    followed), or a transport unknown here. Only its form is checked:
    nothing is built, no file read, for it is the clients' to use.
    """
    from txmasse._client import knownTransports
    from txmasse.descriptions import parseDescription, transportOf
    from txmasse.peertls import parseTLSDescription

    try:
        transport, args, options = parseDescription(description)
        if transport == "masse":
            raise ValueError("clients never follow a masse: endpoint")
        if transport == "tls":
            parseTLSDescription(description)
        elif transport in ("tcp", "ssl"):
            # As Twisted reads them: host then port, or the port alone after host=.
            fields = ["port"] if "host" in options and len(args) == 1 else ["host", "port"]
            given = dict(zip(fields, args, strict=False)) | options
            host, port = given.get("host", ""), given.get("port")
            if not host or port is None:
                raise ValueError("give host= and port=")
            if not isDigits(port) or not 0 < int(port) < 65536:
                raise ValueError(f"port {port!r} must be a whole number from 1 to 65535")
        elif transport == "unix":
            if not options.get("path", args[0] if args else ""):
                raise ValueError("no socket path")
        elif transport not in knownTransports():
            raise ValueError(f"unknown transport {transportOf(description)!r}")
    except ValueError as e:
        raise UsageError(f"--endpoint {description!r}: not a client endpoint ({e})") from None


async def register(context: Context, args: Any) -> None:
    reactor, registry, namespace = context.reactor, context.registry, context.namespace
    try:
        for description in args.endpoint:
            _checkEndpoint(description)
        record = PeerRecord(namespace, args.name, args.endpoint, _metadata(args.meta))
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        lease = await context.deadline(registry.register(record, args.ttl), "register")
    except ValueError as e:  # the registry's checks of the record and ttl
        raise UsageError(str(e)) from None
    print(
        f"registered {namespace}/{args.name} instance {record.instance} "
        f"(ttl {args.ttl:g}s) in {registry.url}; Ctrl-C to release",
        file=context.out,
        flush=True,
    )
    adopting = task.LoopingCall(_adoptDrain, registry, lease, context.out)
    adopting.clock = reactor
    adopting.start(args.ttl / 3, now=False)
    stopped: Deferred[None] = Deferred()

    def release() -> Deferred[None]:
        if adopting.running:  # (not if a turn failed: its error is logged)
            adopting.stop()
        # Close the registry too before the reactor drops its connections: a
        # TLS connection torn down by the shutdown itself logs an unhandled error.
        releasing: Deferred[None] = lease.release()
        return releasing.addBoth(lambda _: registry.close())

    reactor.addSystemEventTrigger("before", "shutdown", release)
    logWarnings()
    await stopped


async def _adoptDrain(registry: IRegistry, lease: ILease, out: TextIO) -> None:
    """
    Take a drain decided elsewhere (C{masse drain}, C{masse undrain}) into
    the record this process keeps, as a txmasse peer does, so that the
    name stays drained.
    """
    ours = lease.record
    adopted = withDrainOf(lease.record, await drainDecidedElsewhere(registry, ours))
    if adopted is None:
        return
    try:
        await lease.update(adopted)
    except Exception as e:  # released meanwhile, or the registry away: the next turn
        log.warn(
            "could not take the {state} decided elsewhere: {error}",
            state=adopted.state,
            error=str(e),
        )
        return
    what = f"{ours.namespace}/{ours.name} {ours.instance[:12]}: {adopted.state}"
    print(what, file=out, flush=True)


# dns


def _dnsArguments(parser: argparse.ArgumentParser) -> None:
    from txmasse.dns.cli import addArguments

    addArguments(parser)


async def dns(context: Context, args: Any) -> None:
    from txmasse.dns import cli as dnscli

    await dnscli.run(context.reactor, context.registry, args, context.out)


# web: the dashboard and /metrics (txmasse.web.cli)


def _webArguments(parser: argparse.ArgumentParser) -> None:
    from txmasse.web.cli import addArguments

    addArguments(parser)


async def web(context: Context, args: Any) -> None:
    from txmasse.web import cli as webcli

    await webcli.run(context.reactor, context.registry, context.namespace, args)


# providers, describe, call: RPC by name (txmasse.rpc.cli)


def _rpcArguments(name: str) -> Callable[[argparse.ArgumentParser], None]:
    def arguments(parser: argparse.ArgumentParser) -> None:
        from txmasse.rpc import cli as rpc

        getattr(rpc, name)(parser)

    return arguments


async def _rpc(context: Context, args: Any) -> None:
    from txmasse.rpc import cli as rpc

    await rpc.run(
        context.reactor, context.registry, context.namespace, args, context.out, sys.stderr
    )


# drain, undrain (txmasse.health_cli)


def _drainArguments(parser: argparse.ArgumentParser) -> None:
    from txmasse.health_cli import drainArguments

    drainArguments(parser)


async def _drain(context: Context, args: Any) -> None:
    from txmasse import health_cli

    await health_cli.run(context, args)


DRAIN_COMMANDS = [
    Command(
        "drain",
        "take every instance of a name (or one: --instance) out of rotation",
        _drainArguments,
        _drain,
    ),
    Command("undrain", "put drained instances back in rotation", _drainArguments, _drain),
]


# completion


def _completionArguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=SHELLS, help="the shell to complete in")


async def completion(context: Context, args: Any) -> None:
    import shtab

    print(shtab.complete(_parser(), shell=args.shell), file=context.out)


COMMANDS: list[Command] = [
    Command("ls", "list live instances", _lsArguments, listPeers, jsonOutput=True),
    Command(
        "watch",
        "print the members, then events (and streams clients report) until Ctrl-C",
        _watchArguments,
        watchPeers,
    ),
    Command(
        "resolve", "print the endpoints of a name", _resolveArguments, resolve, jsonOutput=True
    ),
    Command(
        "connect",
        "stdin/stdout to a peer, by name (end of input: like nc -q, or nc -N with --half-close)",
        _connectArguments,
        connect,
    ),
    Command("register", "keep a name registered until stopped", _registerArguments, register),
    Command("dns", "answer DNS for the registry's live peers", _dnsArguments, dns),
    *DRAIN_COMMANDS,
    Command("web", "serve the live dashboard and /metrics (docs/web.md)", _webArguments, web),
    Command(
        "providers",
        "list the instances that provide an AMP command",
        _rpcArguments("providersArguments"),
        _rpc,
        jsonOutput=True,
    ),
    Command(
        "describe",
        "print a peer's AMP commands and their schemas",
        _rpcArguments("describeArguments"),
        _rpc,
        jsonOutput=True,
    ),
    Command(
        "call",
        "call an AMP command by URI: masse://NS/PEER/COMMAND NAME=VALUE...",
        _rpcArguments("callArguments"),
        _rpc,
    ),
    Command(
        "completion",
        'print a shell completion script: eval "$(masse completion bash)"',
        _completionArguments,
        completion,
        needsRegistry=False,
    ),
]


# Running


def _seconds(option: str, text: str) -> float:
    return checkNumber(text, f"{option} {text!r}:", low=0, above=True)


def _checkArguments(args: Any) -> tuple[str, str]:
    """
    The namespace and registry URL to use, once the arguments (and the
    environment standing in for them) are checked, before anything opens.
    Also resolves C{args.timeout} to seconds.

    @raise UsageError: naming the bad namespace, URL, name, pattern or
        timeout.
    """
    try:
        if args.timeout is not None:
            args.timeout = _seconds("--timeout", str(args.timeout))
        elif os.environ.get("MASSE_TIMEOUT"):
            args.timeout = _seconds("$MASSE_TIMEOUT", os.environ["MASSE_TIMEOUT"])
        else:
            args.timeout = DEFAULT_TIMEOUT
        namespace = defaultNamespace() if args.ns is None else validateName(args.ns, "namespace")
        if args.registry is not None:
            url = args.registry
            parseRegistryURL(url)
        else:
            url = defaultRegistryURL()
            try:
                parseRegistryURL(url)
            except ValueError as e:
                raise ValueError(f"$MASSE_REGISTRY: {e}") from None
        if args.command in ("ls", "resolve"):
            metaConditions(args.meta)
        pattern = getattr(args, "pattern", None)
        if pattern is not None:
            Glob(pattern)
        name = getattr(args, "name", None)
        if name is not None:
            # connect, like the masse: endpoint, takes a pattern too
            if args.command == "connect" and any(char in name for char in "*?["):
                Glob(name)
            else:
                validateName(name, "name")
    except ValueError as e:
        raise UsageError(str(e)) from None
    return namespace, url


def _command(name: str) -> Command:
    for command in COMMANDS:
        if command.name == name:
            return command
    raise UsageError(f"unknown command {name!r}")


async def run(reactor: Any, args: Any, out: TextIO) -> None:
    command = _command(args.command)
    if not command.needsRegistry:
        await command.run(Context(reactor, "", DEFAULT_TIMEOUT, out, ""), args)
        return
    namespace, url = _checkArguments(args)
    context = Context(reactor, namespace, args.timeout, out, url, registryFromURL(reactor, url))
    try:
        await command.run(context, args)
    finally:
        # Closing takes back a registration that ran out of time, in case it
        # got there after all; a registry that does not answer gets one
        # more --timeout for that, not its URL's own timeout.
        try:
            await context.registry.close().addTimeout(context.timeout, reactor)
        except TimeoutError:
            pass


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> NoReturn:
    """
    Run the C{masse} command; exits with its status.
    """
    try:
        args = _parser().parse_args(argv)
    except UsageError as e:
        _fail(f"masse: {e}", 2)

    status = 0
    signalled: list[int] = []  # the signal that stopped the command, if one did

    async def guarded(reactor: Any) -> None:
        nonlocal status
        reactor.callWhenRunning(_stopOnSignals, reactor, signalled)  # after Twisted's own
        _held.hold()
        try:
            await run(reactor, args, out)
            for event in _held.release():
                print(_oneLine(f"masse: warning: {formatEvent(event)}"), file=sys.stderr)
        except UsageError as e:
            print(_oneLine(f"masse: {e}"), file=sys.stderr)
            status = 2
        except BrokenPipeError:
            # The reader went away (| head): end quietly, as Unix tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            status = 141
        except (MasseError, ValueError, OSError) as e:
            if signalled:  # what stopping cut short (a call in flight): the user's doing
                status = 128 + signalled[0]
            else:
                print(_oneLine(f"masse: {e}"), file=sys.stderr)
                status = 1

    handlers = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    try:
        _react(lambda reactor: Deferred.fromCoroutine(guarded(reactor)))
    finally:  # the caller's own again, should it run main in its own process
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    sys.exit(status)


def _stopOnSignals(reactor: Any, signalled: list[int]) -> None:
    """
    The first SIGINT or SIGTERM (noted in C{signalled}) stops the reactor,
    which releases leases and closes the registry; another while that is
    under way ends the process at once (Twisted's own handlers would stop
    it again, and show a traceback for the reactor not running).
    """
    stopping = False

    def stop() -> None:
        with contextlib.suppress(OSError, ValueError):  # stderr gone: stop all the same
            print("masse: stopping (once more to end at once)", file=sys.stderr, flush=True)
        with contextlib.suppress(ReactorNotRunning):  # it was stopping already
            reactor.stop()

    def received(signum: int, frame: object) -> None:
        nonlocal stopping
        if stopping:
            with contextlib.suppress(Exception):  # what was printed is kept
                sys.stdout.flush()
            os._exit(128 + signum)
        stopping = True
        signalled.append(signum)
        reactor.callFromThread(stop)

    for signum in _SIGNALS:
        signal.signal(signum, received)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _react(main: Callable[[Any], Deferred[None]]) -> None:
    try:
        task.react(main)
    except SystemExit as e:
        if e.code not in (0, None):
            raise


def _oneLine(message: str) -> str:
    """
    C{message} on one line: a newline or other control character (in an
    argument argparse or an error quotes as is) is shown escaped.
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def _fail(message: str, status: int) -> NoReturn:
    print(_oneLine(message), file=sys.stderr)
    sys.exit(status)
