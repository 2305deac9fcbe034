"""
The Redis registry: records in Redis, events over pub/sub, leases timed by
the Redis server's clock.

Two connections per registry, each kept up by a L{ClientService}: one for
commands, one for pub/sub (opened on the first watch). On every new command
connection the live leases are written back at once; on every new pub/sub
connection the channels are subscribed again and the watchers catch up
(txredisapi does neither by itself). Every call has a deadline, so nothing
waits forever on a Redis that is down or paused.

Timeouts need no Redis configuration: each process with leases or watchers
in a namespace runs a sweep at the namespace's next expiry, and the sweep
announces each expired lease once.

A lookup is one C{HGETALL} of the name's hash, checked against the server's
clock as this client last read it (L{ServerClock}); the C{LOOKUP} script
answers what the client cannot decide on alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.application.internet import ClientService
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import UNIXClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionRefusedError as RefusedError
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmasse._tcp import tcpEndpoint
from txmasse.errors import RegistryUnavailable
from txmasse.records import Glob, PeerRecord
from txmasse.registry import freshness
from txmasse.registry import redis_scripts as scripts
from txmasse.registry._outage import OutageLog, QuietClientService
from txmasse.registry.base import Lease, Snapshot, extendByPutting
from txmasse.registry.checking import Key, Stored
from txmasse.registry.deadlines import Deadlines
from txmasse.registry.interface import (
    EventKind,
    IRegistry,
    LeaseStatus,
    PeerEvent,
)
from txmasse.registry.server_clock import ServerClock
from txmasse.registry.shared import SharedStoreRegistry
from txmasse.registry.tls import redisTLS
from txmasse.registry.url import RegistryURL
from txmasse.retry import retryPolicy

log = Logger()

RECONNECT = retryPolicy(0.05, 0.25)
"""
Seconds between connection attempts while Redis is unreachable: short, so
that a call learns of a refusal, or of a server back again, within a
quarter second; a refused attempt on loopback or a LAN costs next to nothing.
"""

SWEEP_BATCH = 100
"""Most expired leases one sweep call times out: each call stays short."""

GONE_CHUNK = 500
"""Most tombstones one call reads, as a watcher catches up."""

MAX_EVENT_NUMBER = 2**63 - 1
"""Redis counts events with signed 64-bit integers: a number past this is garbage."""

SQLITE_HINT = "for one machine without Redis, set MASSE_REGISTRY=sqlite:///path/to/registry.db"


def _prefix(namespace: str) -> str:
    return f"masse:{{{namespace}}}:"


class _Factory(Factory):
    """
    Builds txredisapi protocols for a L{ClientService}; remembers why the
    last connection failed (e.g. a wrong password) for error messages.

    @param prepare: run on each new connection once AUTH and SELECT are
        done; the connection serves calls only after it succeeds.
    """

    isLazy = False
    noisy = False  # no "Starting factory" at every reconnect attempt: OutageLog tells
    check: Callable[[Any], Deferred[None]] | None = None
    outage: OutageLog | None = None
    label = "calls"

    def __init__(
        self,
        protocolClass: Callable[..., Any],
        prepare: Callable[[Any], Deferred[None]],
        password: str | None,
        username: str | None,
        db: int | None,
    ):
        self.protocolClass = protocolClass
        self.prepare = prepare
        self.password = password
        self.username = username
        self.db = db
        self.lastError: str | None = None
        self.unreachable = False
        self.refused = False  # the last attempt was refused, and none has connected since

    def buildProtocol(self, addr: object) -> Any:
        protocol = self.protocolClass(
            charset=None,
            password=self.password,
            dbid=self.db,
            convertNumbers=False,
            username=self.username,
        )
        protocol.factory = self
        return protocol

    def stopTrying(self) -> None:
        """
        Called by txredisapi when AUTH or SELECT fail; the service retries.
        """

    def connectionError(self, message: str) -> None:
        self.lastError = message


class _LostAlready(ConnectionError):
    """
    The service handed out a connection whose loss it has not yet heard of.
    """


class _ReadyMixin:
    """
    A connection that serves calls only once it is prepared.

    The handshake (AUTH, SELECT, then the registry's own setup) happens
    here rather than in L{ClientService}'s C{prepareConnection}: the service
    cannot handle a connection lost while it is being prepared (it raises
    C{NoTransition}), and a wrong password closes the connection just then.
    """

    factory: _Factory
    transport: Any

    def connectionMade(self) -> Any:
        self.ready = self.lost = False
        self._readyWaiters: list[Deferred[Any]] = []
        result = super().connectionMade()  # type: ignore[misc]
        prepared, check = self.whenConnected(), self.factory.check
        if check is not None:  # e.g. Sentinel's: refuse a replica
            prepared.addCallback(lambda _: check(self))
        prepared.addCallback(lambda _: self.factory.prepare(self))
        prepared.addCallbacks(self._prepared, self._notPrepared)
        return result

    def whenConnected(self) -> Deferred[Any]:
        return super().whenConnected()  # type: ignore[misc,no-any-return]

    def whenReady(self) -> Deferred[Any]:
        if self.ready:
            return succeed(self)
        if self.lost:  # the service has not heard yet
            return fail(_LostAlready("connection lost"))
        d: Deferred[Any] = Deferred()
        self._readyWaiters.append(d)
        return d

    def _prepared(self, _: object) -> None:
        self.factory.lastError = None
        if self.factory.outage is not None:
            self.factory.outage.connected(self.factory.label)
        self.ready = True
        waiters, self._readyWaiters = self._readyWaiters, []
        for d in waiters:
            d.callback(self)

    def _notPrepared(self, failure: Failure) -> None:
        self.factory.lastError = failure.getErrorMessage()
        if self.factory.outage is not None:
            self.factory.outage.failed(self.factory.label, self.factory.lastError)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        if not self.ready and self.factory.lastError is None:
            self.factory.lastError = reason.getErrorMessage()
        self.ready, self.lost = False, True
        waiters, self._readyWaiters = self._readyWaiters, []
        error = ConnectionError(self.factory.lastError or "connection lost")
        for d in waiters:
            d.errback(error)
        super().connectionLost(reason)  # type: ignore[misc]


class _Commands(_ReadyMixin, txredisapi.RedisProtocol):  # type: ignore[misc]
    pass


class _Subscriber(_ReadyMixin, txredisapi.SubscriberProtocol):  # type: ignore[misc]
    def connectionMade(self) -> Any:
        self.channels: set[str] = set()
        return super().connectionMade()

    def messageReceived(self, pattern: object, channel: bytes, message: bytes) -> None:
        self.factory.registry._received(channel, message)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure) -> None:
        if self.ready:
            self.factory.registry._eventsInterrupted()  # type: ignore[attr-defined]
        super().connectionLost(reason)


@implementer(IStreamClientEndpoint)
class _RecordingEndpoint:
    """
    Remembers why the last connection attempt failed, for error messages.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, factory: _Factory, url: str):
        self._endpoint = endpoint
        self._factory = factory
        self._url = url

    def __repr__(self) -> str:  # in ClientService's log lines
        return f"<Redis at {self._url}>"

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        def failed(failure: Failure) -> Failure:
            self._factory.lastError = failure.getErrorMessage()
            self._factory.unreachable = True
            self._factory.refused = failure.check(RefusedError, ConnectionRefusedError) is not None
            if self._factory.outage is not None:
                self._factory.outage.failed(self._factory.label, self._factory.lastError)
            return failure

        def connected(protocol: Any) -> Any:
            self._factory.unreachable = False
            self._factory.refused = False
            return protocol

        d: Deferred[Any] = self._endpoint.connect(protocolFactory)
        return d.addCallbacks(connected, failed)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _shown(value: object, limit: int = 40) -> str:
    """
    C{value} for a log line or error message, cut short if long.
    """
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _eventNumber(value: object) -> int | None:
    """
    An event number as Redis writes it (what C{INCR} counts on from), or
    C{None} for garbage: checked before C{int}, which refuses more than 4300
    digits with an error.
    """
    if not isinstance(value, bytes) or not value.isdigit() or len(value) > 19:
        return None
    if value.startswith(b"0") and value != b"0":
        return None
    number = int(value)
    return number if number <= MAX_EVENT_NUMBER else None


_PLACED = re.compile(rb"(\d{1,6}):(\d{1,6}):")


def _placed(value: bytes) -> tuple[bytes, str, str]:
    """
    A record as the scripts return it, C{"#NAME:#INSTANCE:" NAME INSTANCE
    JSON}: its JSON, and the name and instance it is stored under (empty
    for garbage, which then fails the placement check).
    """
    lengths = _PLACED.match(value)
    if lengths is None:
        return value, "", ""
    start, nameLength, instanceLength = lengths.end(), int(lengths[1]), int(lengths[2])
    name = value[start : start + nameLength]
    instance = value[start + nameLength : start + nameLength + instanceLength]
    return value[start + nameLength + instanceLength :], _text(name), _text(instance)


def _expiring(value: object) -> tuple[int, bytes] | None:
    """
    A record as its name's hash keeps it, C{@EXPIRY RECORD}: the lease's
    expiry (server ms) and the record; C{None} for anything else.
    """
    if not isinstance(value, bytes) or value[:1] != b"@":
        return None
    digits, space, data = value[1:].partition(b" ")
    if not space or not digits.isdigit() or len(digits) > 18:
        return None
    return int(digits), data


class _BadReply(ValueError):
    """
    A script's reply is not what the script returns.
    """


class _Reply:
    """
    A script's reply, read from the front; anything missing or of the wrong
    kind raises L{_BadReply}.
    """

    def __init__(self, reply: object):
        if not isinstance(reply, list):
            raise _BadReply(f"expected a list, got {_shown(reply)}")
        self._items: list[Any] = reply
        self._next = 0

    def take(self, count: int, what: str) -> list[Any]:
        items = self._items[self._next : self._next + count]
        if len(items) < count:
            raise _BadReply(f"{what}: {count} expected, {len(items)} found")
        self._next += count
        return items

    def number(self, what: str) -> int:
        (value,) = self.take(1, what)
        if not isinstance(value, int) or isinstance(value, bool):
            raise _BadReply(f"{what}: {_shown(value)} is not a number")
        return value

    def count(self, what: str) -> int:
        value = self.number(what)
        if value < 0:
            raise _BadReply(f"{what}: {value} is negative")
        return value

    def strings(self, count: int, what: str) -> list[bytes]:
        values = self.take(count, what)
        for value in values:
            if not isinstance(value, bytes):
                raise _BadReply(f"{what}: {_shown(value)} is not a string")
        return values

    def rest(self) -> list[Any]:
        items, self._next = self._items[self._next :], len(self._items)
        return items

    def end(self) -> None:
        if self._next != len(self._items):
            raise _BadReply(f"{len(self._items) - self._next} unexpected items at the end")


@implementer(IRegistry)
class RedisRegistry(SharedStoreRegistry):
    """
    A registry kept in one Redis database.

    @param url: the registry's URL without password, for messages.
    @param timeout: deadline of every call, in seconds.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        endpoint: IStreamClientEndpoint,
        url: str,
        password: str | None = None,
        username: str | None = None,
        db: int | None = None,
        timeout: float = 2.0,
        grace: float = 3.0,
    ):
        super().__init__(reactor, grace)
        self.url = url
        self._reactor = reactor
        self._endpoint = endpoint
        self._timeout = self.callTimeout = timeout
        self._deadlines = Deadlines(reactor, timeout)
        self._serverClock = ServerClock()
        self._commandFactory = _Factory(_Commands, self._commandsReady, password, username, db)
        self._commands = self._service(self._commandFactory)
        self._subscriberFactory = _Factory(
            _Subscriber, self._subscriberReady, password, username, db
        )
        self._subscriberFactory.registry = self  # type: ignore[attr-defined]
        check = getattr(endpoint, "checkConnection", None)
        self._commandFactory.check = self._subscriberFactory.check = check
        self._commandFactory.outage = self._subscriberFactory.outage = OutageLog(reactor, url)
        self._subscriberFactory.label = "events"
        self._subscriber: ClientService | None = None
        self._readyCommands: Any = None
        self._commands.startService()

    @classmethod
    def fromURL(cls, reactor: IReactorTime, parsed: RegistryURL) -> RedisRegistry:
        """
        The registry C{parsed} names: over TCP, TLS, a UNIX socket, or to
        whichever master the sentinels name.
        """
        return cls(
            reactor,
            endpointFor(reactor, parsed),
            parsed.display,
            password=parsed.password,
            username=parsed.username,
            db=parsed.db,
            timeout=parsed.timeout,
        )

    def __repr__(self) -> str:
        return f"<RedisRegistry {self.url}>"

    def _service(self, factory: _Factory) -> ClientService:
        return QuietClientService(
            _RecordingEndpoint(self._endpoint, factory, self.url),
            factory,
            retryPolicy=RECONNECT,
            clock=self._reactor,
        )

    def _ready(self, service: ClientService) -> Deferred[Any]:
        """
        The connection of C{service} once it is prepared to serve calls.
        """
        d: Deferred[Any] = service.whenConnected()
        return d.addCallback(lambda protocol: protocol.whenReady())

    async def _connectedCommands(self) -> Any:
        """
        The command connection once ready. The call fails as soon as the
        next connection attempt is refused (attempts are at most
        L{RECONNECT}'s cap apart, so a refusal is known within a quarter
        second, and a server that came back is used as soon); other failures
        (a host that does not answer) leave it to the caller's deadline.
        """
        protocol: Any
        try:
            protocol = await self._commands.whenConnected(failAfterFailures=1)
        except CancelledError:
            raise
        except Exception:
            # Out of the service's state machine first: whoever hears of the
            # failure may stop the service, which it cannot do from inside.
            await deferLater(self._reactor, 0)
            if self._commandFactory.refused:
                raise ConnectionRefusedError(self._commandFactory.lastError) from None
            protocol = await self._commands.whenConnected()
        return await protocol.whenReady()

    # Calls with a deadline

    def _unavailable(self, failure: Failure, what: str) -> Failure:
        if failure.check(RegistryUnavailable):
            return failure
        if failure.check(DeferredTimeout):
            reason = f"no answer within {self._timeout:g}s"
        elif failure.check(txredisapi.RedisError, ConnectionError):
            reason = failure.getErrorMessage()
        else:
            return failure
        lastError = self._commandFactory.lastError
        if lastError and lastError not in reason:
            reason += f" (last connection error: {lastError})"
        if self._commandFactory.unreachable:
            reason += f"; {SQLITE_HINT}"
        return Failure(RegistryUnavailable(f"registry {self.url}: {what} failed: {reason}"))

    def _eval(self, what: str, script: scripts.Script, *args: object) -> Deferred[Any]:
        if self.closed:
            return fail(RegistryUnavailable(f"registry {self.url} is closed"))
        protocol = self._readyCommands
        if protocol is not None and protocol.ready:
            # The usual case, kept short: a lookup is one round trip, and
            # the service's state machine and a coroutine cost a third of it.
            try:
                d = _evalsha(protocol, script, args)
            except Exception:
                d = fail()
            d.addErrback(self._evalAgain, script, args)
        else:
            d = Deferred.fromCoroutine(self._evalAgainIfLost(script, args))
        self._deadlines.bound(d)
        return d.addErrback(self._unavailable, what)

    def _evalAgain(
        self, failure: Failure, script: scripts.Script, args: Sequence[object]
    ) -> Failure | Deferred[Any]:
        error = failure.value
        if not isinstance(error, Exception) or not _lostOrDemoted(error):
            return failure
        return Deferred.fromCoroutine(self._evalAgainIfLost(script, args, error))

    def _query(
        self, what: str, parse: Callable[[_Reply], Any], script: scripts.Script, *args: object
    ) -> Deferred[Any]:
        """
        L{_eval}, then C{parse} the reply: one that is malformed (a script of
        another version, or not ours) fails the call with a clear message.
        """

        return self._eval(what, script, *args).addCallback(self._parsed, what, parse)

    def _parsed(self, reply: object, what: str, parse: Callable[[_Reply], Any]) -> Any:
        try:
            return parse(_Reply(reply))
        except _BadReply as e:
            raise RegistryUnavailable(
                f"registry {self.url}: {what} failed: unexpected reply from Redis: {e}"
            ) from None

    async def _evalAgainIfLost(
        self, script: scripts.Script, args: Sequence[object], lost: Exception | None = None
    ) -> Any:
        """
        Run C{script} on the next ready connection. If the connection is lost
        under it (or was, C{lost}), or its server turns out to be a demoted
        master (READONLY), run it again on the next one: every script is
        idempotent, and the caller's deadline still bounds the whole.
        """
        while True:
            if lost is not None:
                if self.closed:
                    raise lost
                await deferLater(self._reactor, 0)  # let the service see the loss first
                log.info(
                    "registry {url}: {error}; running the call again on a new connection",
                    url=self.url,
                    error=str(lost),  # strings: log events must be JSON-serialisable
                )
            try:
                protocol = await self._connectedCommands()
                return await _evalsha(protocol, script, args)
            except Exception as e:
                if not _lostOrDemoted(e):
                    raise
                lost = e

    # SharedStoreRegistry

    def _fetchLookup(self, namespace: str, name: str) -> Deferred[list[PeerRecord]]:
        """
        The name's hash, read with one plain C{HGETALL} while this client
        knows the server's clock (L{ServerClock}): a quarter of a round
        trip cheaper than the C{LOOKUP} script. The script answers instead
        whenever the hash holds anything the client cannot decide on alone:
        a lease at or near its expiry, or anything but records.
        """
        protocol = self._readyCommands
        if (
            self.closed
            or protocol is None
            or not protocol.ready
            or self._serverClock.latestNow() is None
        ):
            return self._lookupByScript(namespace, name)  # which fails at once if closed
        d: Deferred[Any]
        try:
            d = protocol.execute_command("HGETALL", _prefix(namespace) + "n:" + name)
        except Exception:
            d = fail()
        d.addCallbacks(
            self._liveRecords,
            self._lookupAfterAll,
            callbackArgs=(namespace, name),
            errbackArgs=(namespace, name),
        )
        self._deadlines.bound(d)  # the script, if it answers instead, within the same deadline
        return d.addErrback(self._lookupUnavailable, name)

    def _lookupUnavailable(self, failure: Failure, name: str) -> Failure:
        return self._unavailable(failure, f"lookup of {name!r}")

    def _liveRecords(self, reply: object, namespace: str, name: str) -> Any:
        latest = self._serverClock.latestNow()
        if latest is None or not isinstance(reply, list) or len(reply) % 2:
            return self._lookupByScript(namespace, name)
        records = []
        for i in range(0, len(reply), 2):
            expiring = _expiring(reply[i + 1])
            if expiring is None or expiring[0] <= latest:
                return self._lookupByScript(namespace, name)
            record = self._stored(expiring[1], namespace, name=name, instance=_text(reply[i]))
            if record is not None:
                records.append(record)
        return records

    def _lookupAfterAll(self, failure: Failure, namespace: str, name: str) -> Any:
        """
        The C{HGETALL} failed: a key of another type, or a connection lost
        under it; the script decides (and reports), unless the caller gave up.
        """
        if failure.check(CancelledError):
            return failure
        return self._lookupByScript(namespace, name)

    def _lookupByScript(self, namespace: str, name: str) -> Deferred[list[PeerRecord]]:
        clock = self._serverClock
        sent = clock.now()

        def parse(reply: _Reply) -> list[PeerRecord]:
            clock.heard(reply.number("the server's clock"), sent)
            records = self._records(reply, namespace)
            reply.end()
            return [record for record in records if record is not None]

        return self._query(f"lookup of {name!r}", parse, scripts.LOOKUP, _prefix(namespace), name)

    def _fetchLeases(self, namespace: str, glob: Glob) -> Deferred[list[LeaseStatus]]:
        return Deferred.fromCoroutine(self._leasesInChunks(namespace, glob))

    async def _leasesInChunks(self, namespace: str, glob: Glob) -> list[LeaseStatus]:
        statuses: list[LeaseStatus] = []

        def parse(reply: _Reply) -> bytes:
            (cursor,) = reply.strings(1, "cursor")
            records = self._records(reply, namespace, glob)
            lefts = [reply.number("ms left") for _ in records]
            reply.end()
            statuses.extend(
                LeaseStatus(record, left / 1000)
                for record, left in zip(records, lefts, strict=True)
                if record is not None
            )
            return cursor

        cursor = b""
        while True:
            cursor = await self._query(
                f"listing of {glob.pattern!r}",
                parse,
                scripts.LEASES,
                _prefix(namespace),
                glob.prefix,
                glob.luaPattern,
                cursor,
            )
            if not cursor:
                return statuses

    def _listen(self, namespace: str) -> Deferred[None]:
        return self._subscribe(namespace)

    def _publishUsage(self, event: PeerEvent) -> Deferred[None]:
        if self.closed:
            return fail(RegistryUnavailable(f"registry {self.url} is closed"))
        channel = _prefix(event.record.namespace) + "events"
        message = f"usage {event.kind} {event.source} ".encode() + event.record.toJSON()
        d = self._ready(self._commands)
        d.addCallback(lambda protocol: protocol.execute_command("PUBLISH", channel, message))
        self._deadlines.bound(d)
        d.addErrback(self._unavailable, f"report of {event.kind} to {event.record.name!r}")
        return d.addCallback(lambda _: None)

    def _unlisten(self, namespace: str) -> None:
        channel = _prefix(namespace) + "events"
        if self._subscriber is not None:
            d = self._ready(self._subscriber)
            d.addCallback(lambda protocol: _unsubscribe(protocol, channel))
            self._deadlines.bound(d)
            d.addErrback(lambda _: None)

    def _disconnect(self) -> Deferred[None]:
        services = [self._commands] + ([self._subscriber] if self._subscriber else [])
        stopping = [service.stopService() for service in services]
        disconnecting = Deferred.fromCoroutine(_gather(stopping))
        return disconnecting.addBoth(self._stopDeadlines)

    def _stopDeadlines(self, result: object) -> object:
        self._deadlines.stop()  # every call has ended with its connection
        return result

    def _sweepOnce(self, namespace: str) -> Deferred[float | None]:
        clock = self._serverClock
        sent = clock.now()

        def parse(reply: _Reply) -> float | None:
            reply.count("number timed out")
            untilNext = reply.number("ms until the next expiry")
            clock.heard(reply.number("the server's clock"), sent)
            reply.end()
            return None if untilNext < 0 else untilNext / 1000

        return self._query("sweep", parse, scripts.SWEEP, _prefix(namespace), SWEEP_BATCH)

    # The store, as leases and subscriptions use it

    def putRecord(self, record: PeerRecord, ttl: float) -> Deferred[None]:
        d = self._eval(
            f"registration of {record.name!r}",
            scripts.PUT,
            _prefix(record.namespace),
            record.name,
            record.instance,
            freshness.stored(record),
            int(ttl * 1000),
        )
        return d.addCallback(lambda _: None)

    def removeRecord(self, record: PeerRecord) -> Deferred[None]:
        d = self._eval(
            f"release of {record.name!r}",
            scripts.REMOVE,
            _prefix(record.namespace),
            record.name,
            record.instance,
        )
        return d.addCallback(lambda _: None)

    def snapshot(self, namespace: str, glob: Glob, known: Sequence[str]) -> Deferred[Snapshot]:
        return Deferred.fromCoroutine(self._snapshotInChunks(namespace, glob, known))

    async def _snapshotInChunks(self, namespace: str, glob: Glob, known: Sequence[str]) -> Snapshot:
        """
        Read the matching records a chunk at a time, so that no script
        blocks Redis for long, whatever the pattern. The snapshot counts as
        taken at the first chunk: events after it are applied on top of it,
        and applying one that a later chunk already shows changes nothing.
        """
        what = f"find of {glob.pattern!r}"
        counters: list[int] = []
        records: list[PeerRecord] = []

        def parse(reply: _Reply) -> bytes:
            counter, cursor = reply.take(2, "event counter and cursor")
            if not isinstance(cursor, bytes):
                raise _BadReply(f"cursor: {_shown(cursor)} is not a string")
            counters.append(self._counter(counter, namespace))
            records.extend(r for r in self._records(reply, namespace, glob) if r is not None)
            reply.end()
            return cursor

        prefix, cursor = _prefix(namespace), b""
        while True:
            cursor = await self._query(
                what, parse, scripts.FIND, prefix, glob.prefix, glob.luaPattern, cursor
            )
            if not cursor:
                break
        gone: dict[str, EventKind] = {}
        for start in range(0, len(known), GONE_CHUNK):
            chunk = known[start : start + GONE_CHUNK]

            def tombstones(reply: _Reply, chunk: Sequence[str] = chunk) -> None:
                kinds = reply.rest()
                if len(kinds) != len(chunk):
                    raise _BadReply(f"{len(chunk)} tombstones expected, {len(kinds)} found")
                for instance, kind in zip(chunk, kinds, strict=True):
                    if kind in (b"left", b"timedout"):
                        gone[instance] = EventKind(kind.decode())

            await self._query(what, tombstones, scripts.GONE, prefix, *chunk)
        return Snapshot(counters[0], records, gone)

    def extendLeases(self, records: Sequence[PeerRecord], ttl: float) -> Deferred[None]:
        """
        A heartbeat of C{records}, all of one namespace: one script call
        extends them (names and instances only, never the records); those
        Redis lost or let expire are written back whole.
        """
        if not records:
            return succeed(None)
        stamped = records[0].freshness is not None  # a signed namespace: stamps renewed too
        args: list[object] = [_prefix(records[0].namespace), int(ttl * 1000), 3 if stamped else 2]
        for record in records:
            args += (record.name, record.instance)
            if stamped:
                args.append(record.freshness or "0")
        what = (
            f"heartbeat of {len(records)} leases"
            if len(records) > 1
            else (f"heartbeat of {records[0].name!r}")
        )

        def writeBack(missing: object) -> Deferred[None] | None:
            if not isinstance(missing, list):
                raise RegistryUnavailable(
                    f"registry {self.url}: {what} failed: unexpected reply from Redis: "
                    f"{_shown(missing)}"
                )
            lost = [records[i - 1] for i in missing if isinstance(i, int) and 0 < i <= len(records)]
            if not lost:
                return None
            return extendByPutting(self, lost, ttl)  # a putRecord of each

        return self._eval(what, scripts.EXTEND, *args).addCallback(writeBack)

    def storedRecords(self, namespace: str, keys: Sequence[Key]) -> Deferred[Stored]:
        def parse(reply: _Reply) -> Stored:
            values = reply.take(2 * len(keys), "stored records")
            reply.end()
            stored, gone = {}, {}
            for (name, instance), value, tombstone in zip(
                keys, values[::2], values[1::2], strict=True
            ):
                if tombstone in (b"left", b"timedout"):
                    gone[instance] = EventKind(tombstone.decode())
                if value is None:
                    continue
                if not isinstance(value, bytes):
                    raise _BadReply(f"stored records: {_shown(value)} is not a string")
                record = self._stored(value, namespace, name=name, instance=instance)
                if record is not None:
                    stored[(name, instance)] = record
            return Stored(stored, gone)

        flat = [part for key in keys for part in key]
        return self._query("check of events", parse, scripts.STORED, _prefix(namespace), *flat)

    def _records(
        self, reply: _Reply, namespace: str, glob: Glob | None = None
    ) -> list[PeerRecord | None]:
        """
        Read the names a script skipped and the records it found (C{None}
        for each one skipped here: garbage, or stored in the wrong place).
        """
        for bad in reply.strings(reply.count("count of bad names"), "bad names"):
            log.warn(
                "registry {url}: skipping a bad entry in namespace {ns}: {key} is not a "
                "hash of records",
                url=self.url,
                ns=namespace,
                key=_shown(_prefix(namespace) + "n:" + _text(bad), 80),
            )
        values = reply.strings(reply.count("record count"), "records")
        records = []
        for value in values:
            data, name, instance = _placed(value)
            records.append(self._stored(data, namespace, glob, name=name, instance=instance))
        return records

    def _counter(self, value: object, namespace: str) -> int:
        """
        The event counter FIND read; garbage counts as 0, with a warning
        (the next event resets it, where the ACL allows SET).
        """
        if value is None:
            return 0
        seq = _eventNumber(value)
        if seq is None:
            shown = "a key of another type" if value == -1 else _shown(value)
            log.warn(
                "registry {url}: bad event counter in namespace {ns}: {value} is not an event "
                "number; taking it as 0",
                url=self.url,
                ns=namespace,
                value=shown,
            )
            return 0
        return seq

    # Connections

    def _commandsReady(self, protocol: Any) -> Deferred[None]:
        if self._readyCommands is not None:
            self.holdSweeps()  # back after an outage (or a failover)
        self._readyCommands = protocol  # serves calls once ready (and until lost)
        self._serverClock.forget()  # maybe another server's, after a failover

        async def prepare() -> None:
            for script in scripts.ALL:
                await protocol.execute_command("SCRIPT", "LOAD", script.source)
            for lease in list(self._leases):
                lease.refresh().addErrback(_logReregisterFailure, lease)

        return Deferred.fromCoroutine(prepare())

    def _subscribe(self, namespace: str) -> Deferred[None]:
        channel = _prefix(namespace) + "events"
        if self._subscriber is None:
            self._subscriber = self._service(self._subscriberFactory)
            self._subscriber.startService()
        d = self._ready(self._subscriber)

        def subscribeOnce(protocol: Any) -> Deferred[None] | None:
            if channel in protocol.channels:
                return None
            return _subscribe(protocol, channel)

        d.addCallback(subscribeOnce)
        self._deadlines.bound(d)
        return d.addErrback(self._unavailable, f"subscription to namespace {namespace!r}")

    def _subscriberReady(self, protocol: Any) -> Deferred[None]:
        async def prepare() -> None:
            for namespace in list(self._watchers):
                await _subscribe(protocol, _prefix(namespace) + "events")
            for subscription in self._subscriptions():
                subscription.reconnected()

        return Deferred.fromCoroutine(prepare())

    def _received(self, channel: bytes, message: bytes) -> None:
        namespace = _text(channel)[len("masse:{") : -len("}:events")]
        if message.startswith(b"usage "):
            usage = message.split(b" ", 3)
            if len(usage) == 4:
                self._usageReceived(namespace, _text(usage[1]), _text(usage[2]), usage[3])
            return
        seqText, _, rest = message.partition(b" ")
        kindText, _, data = rest.partition(b" ")
        seq = _eventNumber(seqText)
        if seq is None:
            log.warn(
                "registry {url}: skipping a bad event in namespace {ns}: {number} is not "
                "an event number",
                url=self.url,
                ns=namespace,
                number=_shown(seqText),
            )
            return
        expiring = _expiring(data)
        if expiring is not None:  # an earlier txmasse's script, meeting a record of this one's
            data = expiring[1]
        self._eventReceived(namespace, seq, _text(kindText), data)


def _lostOrDemoted(error: Exception) -> bool:
    """
    Whether a call failed because its connection is gone, or its server is
    a demoted master: it may run again on the next connection.
    """
    if isinstance(error, txredisapi.ResponseError):
        return "READONLY" in str(error)
    return isinstance(error, _LostAlready | txredisapi.ConnectionError)


def _evalsha(protocol: Any, script: scripts.Script, args: Sequence[object]) -> Deferred[Any]:
    """
    Run a script by its digest, sending its source only if Redis lost it.
    """
    d: Deferred[Any] = protocol.execute_command("EVALSHA", script.sha, 0, *args)
    return d.addErrback(_reloadScript, protocol, script, args).addErrback(_demoted, protocol)


def _reloadScript(
    failure: Failure, protocol: Any, script: scripts.Script, args: Sequence[object]
) -> Any:
    if failure.check(txredisapi.ResponseError) and "NOSCRIPT" in str(failure.value):
        return protocol.execute_command("EVAL", script.source, 0, *args)
    return failure


def _demoted(failure: Failure, protocol: Any) -> Failure:
    """
    READONLY, from EVALSHA or EVAL: the master was demoted; reconnect, to
    the new one.
    """
    if failure.check(txredisapi.ResponseError) and "READONLY" in str(failure.value):
        protocol.transport.loseConnection()
    return failure


def _logReregisterFailure(failure: Failure, lease: Lease) -> None:
    log.warn(
        "{lease}: could not register again: {error}",
        lease=str(lease),
        error=failure.getErrorMessage(),
    )


def _subscribe(protocol: Any, channel: str) -> Deferred[None]:
    def subscribed(_: object) -> None:
        protocol.channels.add(channel)

    d: Deferred[None] = protocol.subscribe(channel).addCallback(subscribed)
    return d


def _unsubscribe(protocol: Any, channel: str) -> Deferred[None]:
    protocol.channels.discard(channel)
    d: Deferred[None] = protocol.unsubscribe(channel)
    return d


async def _gather(deferreds: Sequence[Deferred[Any]]) -> None:
    for d in deferreds:
        await d


def endpointFor(reactor: Any, parsed: RegistryURL) -> IStreamClientEndpoint:
    """
    How to reach the Redis server that C{parsed} names.
    """
    if parsed.scheme == "redis+unix":
        return UNIXClientEndpoint(reactor, parsed.path, timeout=parsed.timeout)
    if parsed.scheme in ("redis+sentinel", "rediss+sentinel"):
        from txmasse.registry.redis_sentinel import SentinelEndpoint

        return SentinelEndpoint(
            reactor,
            parsed.sentinels,
            parsed.master,
            timeout=parsed.timeout,
            username=parsed.sentinelUsername,
            password=parsed.sentinelPassword,
            tls=redisTLS(parsed) if parsed.scheme == "rediss+sentinel" else None,
        )
    tcp = tcpEndpoint(reactor, parsed.host, parsed.port, timeout=parsed.timeout)
    if parsed.scheme == "redis":
        return tcp
    return wrapClientTLS(redisTLS(parsed)(parsed.host), tcp)
