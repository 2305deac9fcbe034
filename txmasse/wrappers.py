"""
Wrappers: protocol factories stacked between the wire and the application.

A wrapper is any callable that takes an L{IProtocolFactory} and returns one,
like L{twisted.protocols.policies.TimeoutFactory}. A stack is applied in
order, the first wrapper nearest the wire, on client and server alike, so
two sides with the same stack agree on what travels between them.

Endpoint strings name wrappers (C{wrap=log,idle=30}). The names come from
the built-ins here and from L{IMasseWrapper} plugins found with
L{twisted.plugin.getPlugins}, so third parties can add their own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.plugin import getPlugins
from twisted.protocols.policies import (
    ProtocolWrapper,
    ThrottlingFactory,
    TimeoutFactory,
    WrappingFactory,
)
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from txmasse.checks import checkNumber

Wrapper = Callable[[IProtocolFactory], IProtocolFactory]

log = Logger()


class IMasseWrapper(Interface):
    """
    A named wrapper for endpoint strings (C{wrap=NAME} or C{wrap=NAME=ARG}).

    Provide one from a module in a C{twisted/plugins/} directory, as for
    any Twisted plugin; the object must also provide L{twisted.plugin.IPlugin}.
    """

    name: str = Attribute("The wrapper's name in endpoint strings, e.g. 'log'.")

    def makeWrapper(reactor: IReactorTime, argument: str | None) -> Wrapper:  # noqa: N805
        """
        Build the wrapper for one endpoint.

        @param argument: the text after C{=}, or C{None} if there was none.
        @raise ValueError: if C{argument} is not acceptable, saying why.
        """


def checkWrappers(wrappers: Sequence[Wrapper]) -> tuple[Wrapper, ...]:
    """
    C{wrappers}, if each is callable.

    @raise ValueError: naming the first that is not.
    """
    for wrapper in wrappers:
        if not callable(wrapper):
            raise ValueError(f"wrapper {wrapper!r} is not callable")
    return tuple(wrappers)


def stackFactory(factory: IProtocolFactory, wrappers: Sequence[Wrapper]) -> IProtocolFactory:
    """
    Wrap C{factory} in C{wrappers}, the first nearest the wire.

    With no wrappers, C{factory} itself: nothing sits in between.
    """
    for wrapper in reversed(wrappers):
        factory = wrapper(factory)
    return factory


def innerProtocol(protocol: IProtocol) -> IProtocol:
    """
    The protocol one wrapper protocol wraps (C{wrappedProtocol}, as
    L{ProtocolWrapper} and TLS protocols provide it).

    @raise TypeError: if C{protocol} does not say what it wraps; its
        connection is aborted, since no one else would ever close it.
    """
    inner = getattr(protocol, "wrappedProtocol", None)
    if inner is None:
        transport: Any = getattr(protocol, "transport", None)
        if transport is not None:
            transport.abortConnection()
        raise TypeError(f"wrapper protocol {protocol!r} has no wrappedProtocol attribute")
    return inner  # type: ignore[no-any-return]


@implementer(IStreamClientEndpoint)
@attrs.frozen
class WrapperEndpoint:
    """
    Connects through C{endpoint} with the factory wrapped by C{wrapper},
    and fires with the protocol built by the factory it was given: one
    layer of a stack, as Twisted's own C{wrapClientTLS} composes.
    """

    endpoint: IStreamClientEndpoint
    wrapper: Wrapper

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return self.endpoint.connect(self.wrapper(protocolFactory)).addCallback(innerProtocol)


def wrapEndpoint(
    endpoint: IStreamClientEndpoint, wrappers: Sequence[Wrapper]
) -> IStreamClientEndpoint:
    """
    C{endpoint} with C{wrappers} stacked on it, the first nearest the wire;
    with none, C{endpoint} itself.
    """
    for wrapper in wrappers:
        endpoint = WrapperEndpoint(endpoint, wrapper)
    return endpoint


def parseWrappers(reactor: IReactorTime, spec: str) -> list[Wrapper]:
    """
    Build the stack an endpoint string names: C{"log,idle=30,delay=0.05"}.

    @raise ValueError: naming the unknown wrapper or the bad argument.
    """
    wrappers: list[Wrapper] = []
    named: dict[str, IMasseWrapper] | None = None
    for item in spec.split(","):
        name, sep, argument = item.strip().partition("=")
        if not name:
            raise ValueError(
                f"wrap={spec!r}: empty wrapper name (use NAME or NAME=ARG, comma-separated)"
            )
        plugin = BUILTIN.get(name)
        if plugin is None:
            named = named if named is not None else availableWrappers()
            plugin = named.get(name)
        if plugin is None:
            known = ", ".join(sorted(named or availableWrappers()))
            raise ValueError(f"wrap={spec!r}: unknown wrapper {name!r} (known: {known})")
        try:
            wrapper = plugin.makeWrapper(reactor, argument if sep else None)
        except ValueError as e:
            raise ValueError(f"wrap={spec!r}: wrapper {name!r}: {e}") from None
        except Exception as e:  # a third party's bug: still one clear line
            raise ValueError(f"wrap={spec!r}: wrapper {name!r} failed: {e!r}") from None
        if not callable(wrapper):
            raise ValueError(f"wrap={spec!r}: wrapper {name!r} built {wrapper!r}, not a callable")
        wrappers.append(wrapper)
    return wrappers


def availableWrappers() -> dict[str, IMasseWrapper]:
    """
    Every named wrapper: plugins first, then the built-ins, which win.
    """
    found: dict[str, IMasseWrapper] = {}
    for plugin in getPlugins(IMasseWrapper):
        name = getattr(plugin, "name", None)
        if isinstance(name, str) and name:
            found.setdefault(name, plugin)
        else:
            log.warn("ignoring wrapper plugin {plugin}: it has no name", plugin=repr(plugin))
    found.update(BUILTIN)
    return found


def seconds(argument: str | None, what: str = "argument") -> float:
    """
    A positive, finite number of seconds from a wrapper's argument.
    """
    return _positive(argument, what, "seconds")


def _positive(argument: str | None, what: str, unit: str) -> float:
    shown = "missing" if argument is None else repr(argument)
    return checkNumber(argument, f"{what} {shown}", low=0, above=True, unit=unit)


# Built-in wrappers


class _LoggingProtocol(ProtocolWrapper):
    """
    Logs the connection's life and the bytes that cross it.
    """

    factory: _LoggingFactory

    def __init__(self, factory: _LoggingFactory, wrappedProtocol: IProtocol):
        super().__init__(factory, wrappedProtocol)
        self.received = 0
        self.sent = 0

    def _show(self, data: bytes) -> str:
        if not self.factory.showData:
            return ""
        return f": {data[:200]!r}" + ("..." if len(data) > 200 else "")

    def makeConnection(self, transport: Any) -> None:
        # Strings, not address objects: log events must be JSON-serialisable.
        self.peer = str(transport.getPeer())
        log.info("connected {host} <-> {peer}", host=str(transport.getHost()), peer=self.peer)
        super().makeConnection(transport)

    def write(self, data: bytes) -> None:
        self.sent += len(data)
        log.info("{peer}: sent {n} bytes{data}", peer=self.peer, n=len(data), data=self._show(data))
        super().write(data)

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.write(b"".join(data))

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        log.info(
            "{peer}: received {n} bytes{data}", peer=self.peer, n=len(data), data=self._show(data)
        )
        super().dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        log.info(
            "{peer}: closed after {received} bytes in, {sent} out: {reason}",
            peer=self.peer,
            received=self.received,
            sent=self.sent,
            reason=reason.getErrorMessage(),
        )
        super().connectionLost(reason)


class _LoggingFactory(WrappingFactory[_LoggingProtocol]):
    noisy = False  # one per connection: no "Starting factory" lines
    protocol = _LoggingProtocol

    def __init__(self, wrappedFactory: IProtocolFactory, showData: bool):
        super().__init__(wrappedFactory)
        self.showData = showData


class _Delayed:
    """
    Runs actions C{delay} seconds after they are queued, in order; one
    that raises goes to C{failed}, as Twisted hands the failure of a
    protocol's callback to its connection.
    """

    def __init__(self, clock: IReactorTime, delay: float, failed: Callable[[], object]):
        self._clock = clock
        self._delay = delay
        self._failed = failed
        self._queue: deque[tuple[float, Callable[[], object]]] = deque()
        self._timer: IDelayedCall | None = None

    def later(self, action: Callable[[], object]) -> None:
        self._queue.append((self._clock.seconds() + self._delay, action))
        self._schedule()

    def afterQueued(self, action: Callable[[], object]) -> None:
        """
        Run C{action} right after what is queued now, or at once.
        """
        if not self._queue:
            action()
            return
        self._queue.append((self._queue[-1][0], action))

    def cancel(self) -> None:
        self._queue.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self) -> None:
        if self._timer is None and self._queue:
            wait = max(0.0, self._queue[0][0] - self._clock.seconds())
            self._timer = self._clock.callLater(wait, self._run)

    def _run(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        try:
            while self._queue and self._queue[0][0] <= now:
                _, action = self._queue.popleft()
                action()
        except Exception:
            self._failed()
        self._schedule()


class _DelayingProtocol(ProtocolWrapper):
    """
    Delivers every chunk, in both directions, C{delay} seconds late; closing
    waits for the chunks already under way.
    """

    factory: _DelayingFactory
    _lost: Failure | None = None  # the transport's, while its delivery waits

    def makeConnection(self, transport: Any) -> None:
        clock, delay = self.factory.clock, self.factory.delay
        self._outgoing = _Delayed(clock, delay, self._failed)
        self._incoming = _Delayed(clock, delay, self._failed)
        super().makeConnection(transport)

    def _failed(self) -> None:
        """
        A delayed callback raised: log it and drop the connection, as
        Twisted does when the callback raises without a delay.
        """
        log.failure("delay: a delayed callback of {protocol} failed", protocol=self.wrappedProtocol)
        self.abortConnection()

    def write(self, data: bytes) -> None:
        self._outgoing.later(lambda: ProtocolWrapper.write(self, data))

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self._outgoing.afterQueued(lambda: ProtocolWrapper.loseConnection(self))

    def abortConnection(self) -> None:
        self._outgoing.cancel()
        self._incoming.cancel()
        lost, self._lost = self._lost, None
        if lost is not None:  # the transport is gone: tell the application soon, not never
            self.factory.clock.callLater(0, ProtocolWrapper.connectionLost, self, lost)
            return
        transport: Any = self.transport
        transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self._incoming.later(lambda: ProtocolWrapper.dataReceived(self, data))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._outgoing.cancel()
        self._lost = reason

        def deliver() -> None:
            if self._lost is not None:
                self._lost = None
                ProtocolWrapper.connectionLost(self, reason)

        self._incoming.afterQueued(deliver)


class _DelayingFactory(WrappingFactory[_DelayingProtocol]):
    noisy = False  # one per connection: no "Starting factory" lines
    protocol = _DelayingProtocol

    def __init__(self, wrappedFactory: IProtocolFactory, clock: IReactorTime, delay: float):
        super().__init__(wrappedFactory)
        self.clock = clock
        self.delay = delay


class _IdleFactory(TimeoutFactory):
    """
    L{TimeoutFactory} on the given clock.
    """
    noisy = False  # one per connection: no "Starting factory" lines

    def __init__(self, wrappedFactory: IProtocolFactory, period: float, clock: IReactorTime):
        super().__init__(wrappedFactory, timeoutPeriod=period)
        self.clock = clock

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        return self.clock.callLater(period, func)


class _LimitFactory(ThrottlingFactory):
    """
    L{ThrottlingFactory} on the given clock, one limit both ways.
    """
    noisy = False  # one per connection: no "Starting factory" lines

    def __init__(self, wrappedFactory: IProtocolFactory, limit: int, clock: IReactorTime):
        super().__init__(wrappedFactory, readLimit=limit, writeLimit=limit)
        self.clock = clock

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        return self.clock.callLater(period, func)


@implementer(IMasseWrapper)
class _Log:
    """
    C{log}: connection events and byte counts through L{twisted.logger};
    C{log=data} also shows the bytes.
    """

    name = "log"

    def makeWrapper(self, reactor: IReactorTime, argument: str | None) -> Wrapper:
        if argument not in (None, "data"):
            raise ValueError(f"argument {argument!r} must be 'data' or left out")
        return lambda factory: _LoggingFactory(factory, showData=argument == "data")


@implementer(IMasseWrapper)
class _Idle:
    """
    C{idle=SECONDS}: drop a connection that has been silent that long.
    """

    name = "idle"

    def makeWrapper(self, reactor: IReactorTime, argument: str | None) -> Wrapper:
        period = seconds(argument)

        return lambda factory: _IdleFactory(factory, period, reactor)


@implementer(IMasseWrapper)
class _Delay:
    """
    C{delay=SECONDS}: simulated latency, added in each direction.
    """

    name = "delay"

    def makeWrapper(self, reactor: IReactorTime, argument: str | None) -> Wrapper:
        delay = seconds(argument)
        return lambda factory: _DelayingFactory(factory, reactor, delay)


@implementer(IMasseWrapper)
class _Limit:
    """
    C{limit=BYTES_PER_SECOND}: bandwidth cap per connection on a client, for
    all connections together on a server (L{ThrottlingFactory}: reads are
    paused; writes only slow down producers).
    """

    name = "limit"

    def makeWrapper(self, reactor: IReactorTime, argument: str | None) -> Wrapper:
        rate = _positive(argument, "argument", "bytes per second")
        limit = max(1, int(rate))

        return lambda factory: _LimitFactory(factory, limit, reactor)


BUILTIN: dict[str, IMasseWrapper] = {
    plugin.name: plugin for plugin in (_Log(), _Idle(), _Delay(), _Limit())
}
