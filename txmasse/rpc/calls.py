"""
Discovery and calls by URI: which instances provide a command, and calling
one of them (or all) by C{masse://NS/PEER/COMMAND}.

A call by URI is one-shot: it connects to the chosen instance with
L{MasseClientEndpoint.connectToRecord}, calls, and closes. For connections
kept open, use a L{txmasse.rpc.proxy.Proxy} (one peer) or a
L{txmasse.PeerGroup} (every match).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ConnectionClosed
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from txmasse.checks import checkNumber
from txmasse.endpoints import PICKS, MasseClientEndpoint
from txmasse.errors import NoReachablePeer
from txmasse.records import PeerRecord, validateName
from txmasse.registry import IRegistry, defaultNamespace, registryFromURL
from txmasse.rpc.errors import CallInterrupted, NoProvider, RPCError
from txmasse.rpc.local import callLocal
from txmasse.rpc.publish import LocalPeer, servedHere
from txmasse.rpc.schema import CommandSchema, Schema, SchemaError, commandFromSchema, readSchema
from txmasse.rpc.uri import MethodURI, isGlob, parseURI
from txmasse.rpc.values import checkArguments

log = Logger()

DEFAULT_TIMEOUT = 30.0


def checkTimeout(timeout: object) -> float:
    """
    C{timeout} as seconds, if it is a usable deadline.
    """
    if isinstance(timeout, str):
        raise ValueError(f"timeout={timeout!r}: must be a number of seconds, not text")
    return checkNumber(timeout, f"timeout={timeout!r}:", low=0, above=True, high=1e6)


def who(record: PeerRecord) -> str:
    return f"{record.namespace}/{record.name} (instance {record.instance[:12]})"


def schemaOf(record: PeerRecord) -> Schema | None:
    """
    The schema C{record} publishes; C{None} if none, or if it is garbage
    (logged as a warning: the record itself stays usable).
    """
    try:
        return readSchema(record.metadata)
    except SchemaError as e:
        log.warn(
            "ignoring the AMP schema published by {who}: {error}", who=who(record), error=str(e)
        )
        return None


async def _matching(registry: IRegistry, namespace: str, peer: str) -> list[PeerRecord]:
    if isGlob(peer):
        return list(await registry.find(namespace, peer))
    return list(await registry.lookup(namespace, peer))


async def findProviders(
    registry: IRegistry, namespace: str, command: str, pattern: str = "*"
) -> list[tuple[PeerRecord, CommandSchema]]:
    """
    Every live instance matching C{pattern} that publishes C{command}, with
    the command's schema, longest registered first.
    """
    validateName(command, "command name")
    found = []
    for record in await _matching(registry, validateName(namespace, "namespace"), pattern):
        schema = schemaOf(record)
        if schema is not None and command in schema.commands:
            found.append((record, schema.commands[command]))
    return sorted(found, key=lambda pair: pair[0].registered)


def providers(
    registry: IRegistry, namespace: str, command: str, pattern: str = "*"
) -> Deferred[list[PeerRecord]]:
    """
    The records of every live instance (matching C{pattern}) in
    C{namespace} that provides C{command}.
    """

    async def records() -> list[PeerRecord]:
        return [record for record, _ in await findProviders(registry, namespace, command, pattern)]

    return Deferred.fromCoroutine(records())


def describe(
    registry: IRegistry, namespace: str, name: str
) -> Deferred[list[tuple[PeerRecord, Schema | None]]]:
    """
    Each live instance of C{name} (or a glob) and the schema it publishes
    (C{None}: none, or garbage).
    """

    async def described() -> list[tuple[PeerRecord, Schema | None]]:
        records = await _matching(registry, validateName(namespace, "namespace"), name)
        return [(record, schemaOf(record)) for record in sorted(records, key=_order)]

    return Deferred.fromCoroutine(described())


def _order(record: PeerRecord) -> tuple[str, float]:
    return (record.name, record.registered)


@attrs.frozen
class Target:
    """
    One instance to call, the command class to call it with, and, for an
    instance this process serves, where to call it in-process.
    """

    record: PeerRecord
    command: type[amp.Command]
    schema: CommandSchema
    local: LocalPeer | None = None


class RPC:
    """
    Calls AMP commands by URI, on instances found in C{registry}.

    @param registry: an L{IRegistry} or its URL (default C{$MASSE_REGISTRY}).
    @param pick: which provider to call: C{random}, C{first} (longest
        registered) or C{roundrobin}; if it cannot be reached, the next.
    @param includeSelf: also call instances this process serves; they are
        called in-process. Left out by default, as a L{txmasse.PeerGroup}
        leaves them out.
    @param timeout: seconds for each call, connecting included.
    @param clientOptions: more L{MasseClientEndpoint} options (C{proto},
        C{tls}, C{wrappers}...), for connecting to providers.
    """

    def __init__(
        self,
        registry: IRegistry | str | None = None,
        reactor: Any = None,
        pick: str = "random",
        includeSelf: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        **clientOptions: Any,
    ):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        if pick not in PICKS:
            raise ValueError(f"pick={pick!r}: must be one of {', '.join(PICKS)}")
        self.timeout = checkTimeout(timeout)
        self.reactor = reactor
        self.registry: IRegistry = (
            registryFromURL(reactor, registry)
            if registry is None or isinstance(registry, str)
            else registry
        )
        self.pick = pick
        self.includeSelf = includeSelf
        self.clientOptions = clientOptions
        MasseClientEndpoint(reactor, "check", registry=self.registry, **clientOptions)
        self._random = random.Random()
        self._turn = 0

    # Discovery

    def providers(
        self, command: str, namespace: str | None = None, pattern: str = "*"
    ) -> Deferred[list[PeerRecord]]:
        return providers(self.registry, _namespace(namespace), command, pattern)

    def describe(
        self, name: str, namespace: str | None = None
    ) -> Deferred[list[tuple[PeerRecord, Schema | None]]]:
        return describe(self.registry, _namespace(namespace), name)

    # Calls

    def call(
        self, uri: str, command: type[amp.Command] | None = None, /, **arguments: object
    ) -> Deferred[dict[str, Any]]:
        """
        Call the command C{uri} names on one provider (by C{pick}); fires
        with its answer. Fails with C{ValueError} for a bad URI or
        arguments, L{NoProvider}, L{NoReachablePeer}, L{CallInterrupted},
        L{RPCError} on timeout, or the peer's own AMP error.

        @param command: the L{amp.Command<twisted.protocols.amp.Command>}
            class to call with (its errors arrive as its exceptions);
            default: built from the schema the provider publishes.
        """
        return Deferred.fromCoroutine(self._call(uri, command, arguments))

    def callAll(
        self, uri: str, command: type[amp.Command] | None = None, /, **arguments: object
    ) -> Deferred[dict[PeerRecord, object]]:
        """
        Call every provider that C{uri} matches, at once; fires with each
        record mapped to its answer or to the L{Failure<twisted.python.failure.Failure>} it gave.
        """
        return Deferred.fromCoroutine(self._callAll(uri, command, arguments))

    async def _call(
        self, text: str, command: type[amp.Command] | None, arguments: Mapping[str, object]
    ) -> dict[str, Any]:
        uri = parseURI(text)
        targets = self._ordered(await self.targets(uri, command, arguments))
        tried = []
        for target in targets:
            try:
                return await self._callOne(uri, target, arguments)
            except _Unreachable as e:
                tried.append(f"{who(target.record)}: {e}")
        raise NoReachablePeer(f"{uri}: no provider could be reached: {'; '.join(tried)}")

    async def _callAll(
        self, text: str, command: type[amp.Command] | None, arguments: Mapping[str, object]
    ) -> dict[PeerRecord, object]:
        uri = parseURI(text)
        targets = await self.targets(uri, command, arguments)
        calls = [
            Deferred.fromCoroutine(self._callOne(uri, target, arguments)) for target in targets
        ]
        results = await DeferredList(calls, consumeErrors=True)
        answers: dict[PeerRecord, object] = {}
        for target, (_, outcome) in zip(targets, results, strict=True):
            if isinstance(outcome, Failure) and outcome.check(_Unreachable):
                outcome = Failure(NoReachablePeer(f"{who(target.record)}: {outcome.value}"))
            answers[target.record] = outcome
        return answers

    async def targets(
        self,
        uri: MethodURI,
        command: type[amp.Command] | None = None,
        arguments: Mapping[str, object] | None = None,
    ) -> list[Target]:
        """
        The instances C{uri} matches that provide its command, each with the
        command class to call it with; C{arguments} checked against each
        schema.

        @raise NoProvider: if there are none, saying what was found.
        """
        assert uri.command is not None
        if command is not None:
            if not (isinstance(command, type) and issubclass(command, amp.Command)):
                raise ValueError(f"{command!r} is not an AMP Command class")
            name = command.commandName.decode("ascii", "replace")
            if name != uri.command:
                raise ValueError(
                    f"command class {command.__name__} is {name!r}, not {uri.command!r} as in {uri}"
                )
        records = await _matching(self.registry, uri.namespace, uri.peer)
        targets: list[Target] = []
        others: set[str] = set()
        selves = 0
        for record in sorted(records, key=_order):
            schema = schemaOf(record)
            if schema is None:
                continue
            local = servedHere(schema.local)
            if local is not None and not self.includeSelf:
                selves += int(uri.command in schema.commands)
                continue
            published = schema.commands.get(uri.command)
            if published is None:
                others.update(schema.commands)
                continue
            if arguments is not None and command is None:
                checkArguments(published, arguments)
            targets.append(
                Target(record, command or commandFromSchema(published), published, local)
            )
        if not targets:
            raise NoProvider(_noProvider(uri, len(records), others, selves))
        return targets

    def _ordered(self, targets: Sequence[Target]) -> list[Target]:
        ordered = list(targets)  # longest registered first
        if self.pick == "random":
            self._random.shuffle(ordered)
        elif self.pick == "roundrobin":
            turn = self._turn % len(ordered)
            self._turn += 1
            ordered = ordered[turn:] + ordered[:turn]
        return ordered

    async def _callOne(
        self, uri: MethodURI, target: Target, arguments: Mapping[str, object]
    ) -> dict[str, Any]:
        if target.local is not None:
            return await callLocal(target.local, target.command, arguments)
        endpoint = MasseClientEndpoint(
            self.reactor,
            target.record.name,
            target.record.namespace,
            self.registry,
            timeout=self.timeout,
            **self.clientOptions,
        )
        try:
            protocol: Any = await endpoint.connectToRecord(
                target.record, Factory.forProtocol(amp.AMP)
            )
        except Exception as e:
            raise _Unreachable(str(e)) from None
        try:
            return await sendCall(
                self.reactor,
                protocol,
                target.command,
                arguments,
                self.timeout,
                str(uri),
                who(target.record),
            )
        finally:
            if protocol.transport is not None:
                protocol.transport.loseConnection()


class _Unreachable(RPCError):
    """
    No connection to this instance: the call was never sent, so the next
    provider may be tried.
    """


def sendCall(
    reactor: Any,
    protocol: amp.AMP,
    command: type[amp.Command],
    arguments: Mapping[str, object],
    timeout: float | None,
    uri: str,
    target: str,
) -> Deferred[dict[str, Any]]:
    """
    C{callRemote} on a connected protocol, with a deadline, and a clear
    L{CallInterrupted} when the connection drops with the call in flight.

    Giving up (the deadline, or the caller cancelling) leaves AMP's own
    Deferred alone: its late answer is dropped, other calls on the same
    connection go on. No coroutine: this is a proxy's whole cost per call.
    """
    answer: Deferred[dict[str, Any]] = Deferred()
    timer: Any = None

    def deliver(outcome: Any) -> None:
        if timer is not None and timer.active():
            timer.cancel()
        if answer.called:
            return
        if isinstance(outcome, Failure) and outcome.check(ConnectionClosed):
            outcome = Failure(
                CallInterrupted(
                    f"{uri}: the connection to {target} was lost with the call in flight "
                    f"(not retried: it may have run): {outcome.getErrorMessage()}"
                )
            )
        answer.callback(outcome)

    def expire() -> None:
        if not answer.called:
            answer.errback(RPCError(f"{uri}: no answer from {target} within {timeout:g}s"))

    sent: Deferred[Any] = protocol.callRemote(command, **arguments)
    if timeout is not None and not sent.called:
        timer = reactor.callLater(timeout, expire)
    sent.addBoth(deliver)
    return answer


def _namespace(namespace: str | None) -> str:
    return defaultNamespace() if namespace is None else validateName(namespace, "namespace")


def _noProvider(uri: MethodURI, found: int, others: set[str], selves: int) -> str:
    what = "no live instance" if found == 0 else f"none of the {found} live instances"
    match = f"matching {uri.peer!r}" if uri.isGlob else f"of {uri.peer!r}"
    message = f"{uri}: {what} {match} in namespace {uri.namespace!r} provides {uri.command!r}"
    if others:
        message += f" (they provide: {', '.join(sorted(others))})"
    if selves:
        message += f"; {selves} served by this process left out (includeSelf=True calls them)"
    return message
