"""
The C{masse} command: look into a registry from a shell, watch it, and
reach or register peers by name.

Exit status: 0 on success, 1 when the registry or the peer fails us, 2 for
bad arguments. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txmasse.checks import checkNumber
from txmasse.errors import MasseError, PeerNotFound
from txmasse.health_cli import matches, metaConditions, stateJSON
from txmasse.records import Glob, PeerRecord, validateName
from txmasse.registry import (
    IRegistry,
    LeaseStatus,
    PeerEvent,
    defaultNamespace,
    defaultRegistryURL,
    parseRegistryURL,
    registryFromURL,
)
from txmasse.registry.signed import SignedRegistry


class UsageError(Exception):
    """
    Bad arguments: exit status 2.
    """


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="masse",
        description="Look into a txmasse registry, and reach peers by name.",
        epilog="The registry defaults to $MASSE_REGISTRY, the namespace to $MASSE_NAMESPACE.",
    )
    parser.add_argument("--registry", metavar="URL", help="registry URL")
    parser.add_argument("--ns", metavar="NAMESPACE", help="namespace")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ls = commands.add_parser("ls", help="list live instances")
    ls.add_argument("pattern", nargs="?", default="*", help="name glob (default *)")
    ls.add_argument("--json", action="store_true", help="one JSON object a line")
    ls.add_argument(
        "--all",
        action="store_true",
        help="also the records a signed namespace ignores, flagged, and how many",
    )

    watch = commands.add_parser(
        "watch", help="print events (and streams clients report) until Ctrl-C"
    )
    watch.add_argument("pattern", nargs="?", default="*", help="name glob (default *)")
    watch.add_argument("--json", action="store_true", help="one JSON object a line")

    resolve = commands.add_parser("resolve", help="print the endpoints of a name")
    resolve.add_argument("name")

    connect = commands.add_parser(
        "connect",
        help="stdin/stdout to a peer, by name; end of input half-closes (like nc -N)",
    )
    connect.add_argument("name")
    connect.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    connect.add_argument(
        "--ca", metavar="PEM", help="connect only over TLS, verified against this CA"
    )
    connect.add_argument(
        "--cert", metavar="PEM", help="client certificate over TLS (and its key, unless --key)"
    )
    connect.add_argument("--key", metavar="PEM", help="the client certificate's key")
    connect.add_argument(
        "--tls",
        action="store_true",
        help="connect only over TLS, verified against the system trust roots",
    )

    register = commands.add_parser("register", help="keep a name registered until stopped")
    register.add_argument("name")
    register.add_argument(
        "--endpoint",
        action="append",
        required=True,
        metavar="DESC",
        help="client endpoint description, e.g. tcp:host=10.0.0.7:port=8080 (repeatable)",
    )
    register.add_argument("--ttl", type=float, default=10.0, help="lease seconds (default 10)")
    register.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata (repeatable)"
    )
    from txmasse.dns.cli import addArguments as addDNSArguments

    dns = commands.add_parser("dns", help="answer DNS for the registry's live peers")
    addDNSArguments(dns)
    for sub in (ls, watch, resolve, connect, register, dns):
        sub.error = parser.error  # type: ignore[method-assign]
    from txmasse import health_cli  # drain, undrain; --meta for ls and resolve

    health_cli.addArguments(commands, parser)
    health_cli.addMetaFilter(ls)
    health_cli.addMetaFilter(resolve)
    from txmasse.rpc import cli as rpc  # providers, describe, call

    rpc.addArguments(commands, parser)
    return parser


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


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


async def listPeers(registry: IRegistry, namespace: str, args: Any, out: TextIO) -> None:
    if args.all:
        await listAll(registry, namespace, args, out)
        return
    statuses: list[LeaseStatus] = await registry.leases(namespace, args.pattern)
    meta = metaConditions(args.meta)
    statuses = [status for status in statuses if matches(status.record, meta)]
    _printLeases([(status, None) for status in statuses], args, out)


async def listAll(registry: IRegistry, namespace: str, args: Any, out: TextIO) -> None:
    """
    C{masse ls --all}: every lease, each with why a signed namespace
    ignores it (or C{ok}), then how many it ignores.
    """
    signed = isinstance(registry, SignedRegistry) and registry.signs(namespace)
    if isinstance(registry, SignedRegistry):
        checked = await registry.audit(namespace, args.pattern)
    else:
        checked = [(status, None) for status in await registry.leases(namespace, args.pattern)]
    _printLeases(checked, args, out, status="ok" if signed else "unsigned")
    if not args.json:
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
    The table (or JSON lines) of C{masse ls}; with C{status}, a STATUS
    column says which leases are rejected and why (C{status} for the rest).
    """
    checked = sorted(checked, key=lambda c: (c[0].record.name, c[0].record.registered))
    now = time.time()
    if args.json:
        for lease, problem in checked:
            line = {**_recordJSON(lease.record), "expiresIn": round(lease.expiresIn, 3)}
            if status is not None:
                line["rejected"] = problem
            print(json.dumps(line, sort_keys=True), file=out)
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
                " ".join(f"{k}={v}" for k, v in sorted(record.metadata.items())),
            ]
        )
        if status is not None:
            rows[-1].append(status if problem is None else f"REJECTED: {problem}")
    print(_table(rows), file=out)


def _eventLine(event: PeerEvent, asJSON: bool) -> str:
    record = event.record
    if asJSON:
        line = {"time": time.time(), "kind": str(event.kind), "record": _recordJSON(record)}
        if event.source is not None:
            line["source"] = event.source
        return json.dumps(line, sort_keys=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    source = f" from {event.source}" if event.source is not None else ""
    return (
        f"{stamp}Z {event.kind:<8} {record.namespace}/{record.name} "
        f"{record.instance[:12]} {' '.join(record.endpoints)}{source}"
        f"{'' if event.source is not None else ' ' + record.state}"
    )


async def watchPeers(registry: IRegistry, namespace: str, args: Any, out: TextIO) -> None:
    def show(event: PeerEvent) -> None:
        print(_eventLine(event, args.json), file=out, flush=True)

    await registry.watch(namespace, args.pattern, show, usage=True)
    await Deferred()  # until Ctrl-C stops the reactor


async def resolve(registry: IRegistry, namespace: str, args: Any, out: TextIO) -> None:
    validateName(args.name, "name")
    records = await registry.lookup(namespace, args.name)
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
    for record in records:
        for endpoint in record.endpoints:
            print(endpoint, file=out)


@implementer(IHalfCloseableProtocol)
class _Relay(Protocol):
    """
    Copies bytes to C{peer}'s transport. Like netcat: when our input ends,
    the peer's output is half-closed; when the remote end stops sending (or
    either connection is lost), it is over.
    """

    def __init__(self, remote: bool):
        self.lost: Deferred[None] = Deferred()
        self.remote = remote
        self.peer: _Relay | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def readConnectionLost(self) -> None:
        if self.remote:
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif self.peer is not None and self.peer.transport is not None:
            loseWrite = getattr(self.peer.transport, "loseWriteConnection", None)
            if loseWrite is not None:
                loseWrite()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback(None)


async def connect(reactor: Any, registry: IRegistry, namespace: str, args: Any) -> None:
    from twisted.internet.stdio import StandardIO

    from txmasse.endpoints import MasseClientEndpoint
    from txmasse.peertls import tlsFromOptions

    try:
        checkNumber(args.timeout, f"--timeout {args.timeout}:", low=0, above=True)
    except ValueError as e:
        raise UsageError(str(e)) from None
    options = {key: getattr(args, key) for key in ("cert", "key", "ca") if getattr(args, key)}
    if args.tls:
        options["tls"] = "true"
    try:
        tls = tlsFromOptions(options, server=False)
    except ValueError as e:
        raise UsageError(str(e)) from None
    endpoint = MasseClientEndpoint(
        reactor, args.name, namespace=namespace, registry=registry, timeout=args.timeout, tls=tls
    )
    remote = _Relay(remote=True)
    await endpoint.connect(Factory.forProtocol(lambda: remote))
    local = _Relay(remote=False)
    local.peer, remote.peer = remote, local
    stdio = StandardIO(local, reactor=reactor)
    await DeferredList([remote.lost, local.lost], fireOnOneCallback=True)
    if remote.transport is not None:
        remote.transport.loseConnection()
    stdio.loseConnection()
    await local.lost  # stdout has had everything the peer sent


def _metadata(pairs: Sequence[str]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--meta {pair!r}: must be KEY=VALUE")
        metadata[key] = value
    return metadata


async def register(reactor: Any, registry: IRegistry, namespace: str, args: Any) -> None:
    try:
        record = PeerRecord(namespace, args.name, args.endpoint, _metadata(args.meta))
    except ValueError as e:
        raise UsageError(str(e)) from None
    lease = await registry.register(record, args.ttl)
    print(
        f"registered {namespace}/{args.name} instance {record.instance} "
        f"(ttl {args.ttl:g}s) in {registry.url}; Ctrl-C to release",
        flush=True,
    )
    stopped: Deferred[None] = Deferred()
    # Close the registry too before the reactor drops its connections: a TLS
    # connection torn down by the shutdown itself logs an unhandled error.
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: lease.release().addBoth(lambda _: registry.close())
    )
    await stopped


def _checkArguments(args: Any) -> tuple[str, str]:
    """
    The namespace and registry URL to use, once the arguments (and the
    environment standing in for them) are checked, before anything opens.

    @raise UsageError: naming the bad namespace, URL, name or pattern.
    """
    try:
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


async def run(reactor: Any, args: Any, out: TextIO) -> None:
    namespace, url = _checkArguments(args)
    registry = registryFromURL(reactor, url)
    try:
        if args.command == "ls":
            await listPeers(registry, namespace, args, out)
        elif args.command == "watch":
            await watchPeers(registry, namespace, args, out)
        elif args.command == "resolve":
            await resolve(registry, namespace, args, out)
        elif args.command == "connect":
            await connect(reactor, registry, namespace, args)
        elif args.command == "register":
            await register(reactor, registry, namespace, args)
        elif args.command in ("drain", "undrain"):
            from txmasse import health_cli

            await health_cli.run(registry, namespace, args, out)
        elif args.command == "dns":
            from txmasse.dns import cli as dnscli

            await dnscli.run(reactor, registry, args, out)
        else:
            from txmasse.rpc import cli as rpc

            await rpc.run(reactor, registry, namespace, args, out, sys.stderr)
    finally:
        await registry.close()


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> NoReturn:
    """
    Run the C{masse} command; exits with its status.
    """
    try:
        args = _parser().parse_args(argv)
    except UsageError as e:
        _fail(f"masse: {e} (see masse --help)", 2)

    status = 0

    async def guarded(reactor: Any) -> None:
        nonlocal status
        try:
            await run(reactor, args, out)
        except UsageError as e:
            print(_oneLine(f"masse: {e}"), file=sys.stderr)
            status = 2
        except (MasseError, ValueError, OSError) as e:
            print(_oneLine(f"masse: {e}"), file=sys.stderr)
            status = 1

    _react(lambda reactor: Deferred.fromCoroutine(guarded(reactor)))
    sys.exit(status)


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
