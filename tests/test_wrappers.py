"""
Wrappers: stacking order, unwrapping, the built-ins (on a fake clock and
transport), and third-party wrappers found as plugins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport, StringTransportWithDisconnection
from twisted.logger import capturedLogs
from twisted.protocols.policies import ThrottlingFactory, TimeoutFactory

from tests.endpoint_helpers import Collector, addEach, adding, writePluginDirectory, xorEach, xoring
from txmasse.wrappers import (
    BUILTIN,
    Wrapper,
    availableWrappers,
    innerProtocol,
    parseWrappers,
    stackFactory,
)

ADDRESS = IPv4Address("TCP", "127.0.0.1", 4000)


def connect(
    wrappers: list[Wrapper], transport: StringTransport | None = None
) -> tuple[Any, Collector, StringTransport]:
    """
    Build a stacked protocol on a string transport: (outermost, app, transport).
    """
    factory = stackFactory(Factory.forProtocol(Collector), wrappers)
    outer = factory.buildProtocol(ADDRESS)
    assert outer is not None
    transport = transport if transport is not None else StringTransportWithDisconnection()
    if isinstance(transport, StringTransportWithDisconnection):
        transport.protocol = outer
    outer.makeConnection(transport)
    app = outer
    for _ in wrappers:
        app = innerProtocol(app)
    assert isinstance(app, Collector)
    return outer, app, transport


def test_no_wrappers_is_the_factory_itself() -> None:
    factory = Factory.forProtocol(Collector)
    assert stackFactory(factory, []) is factory
    protocol = factory.buildProtocol(ADDRESS)
    assert protocol is not None


def test_first_wrapper_is_nearest_the_wire() -> None:
    outer, app, transport = connect([adding(1), xoring(0x0F)])
    assert app.transport is not transport
    app.transport.write(b"\x00ab")  # type: ignore[union-attr]
    assert transport.value() == addEach(xorEach(b"\x00ab", 0x0F), 1) == b"\x10on"
    outer.dataReceived(addEach(xorEach(b"reply", 0x0F), 1))
    assert app.received == b"reply"


def test_unwrap_needs_wrapped_protocol() -> None:
    protocol = Protocol()
    transport = StringTransport()
    protocol.makeConnection(transport)
    with pytest.raises(TypeError, match="has no wrappedProtocol"):
        innerProtocol(protocol)
    assert transport.disconnected  # aborted: nobody else would close it


def test_wrapper_endpoint_fires_with_the_applications_protocol() -> None:
    """
    Each layer unwraps its own wrapper: the caller gets the protocol its
    factory built, however many wrappers are stacked.
    """
    from twisted.internet.endpoints import connectProtocol
    from twisted.internet.testing import MemoryReactorClock

    from txmasse.wrappers import wrapEndpoint

    reactor = MemoryReactorClock()
    raw = TCP4ClientEndpoint(reactor, "127.0.0.1", 4000)
    endpoint = wrapEndpoint(raw, [adding(1), xoring(0x0F)])
    app = Collector()
    connecting = connectProtocol(endpoint, app)
    factory = reactor.tcpClients[0][2]
    outer = factory.buildProtocol(ADDRESS)
    assert outer is not None
    transport = StringTransportWithDisconnection()
    transport.protocol = outer
    outer.makeConnection(transport)
    connected: list[object] = []
    connecting.addCallback(connected.append)
    assert connected == [app]
    app.transport.write(b"\x00ab")  # type: ignore[union-attr]
    assert transport.value() == b"\x10on"
    assert wrapEndpoint(raw, []) is raw


def test_parse_names_and_arguments() -> None:
    clock = Clock()
    stack = parseWrappers(clock, "log, idle=30,delay=0.25,limit=1000,log=data")
    factories = [wrap(Factory()) for wrap in stack]
    assert isinstance(factories[1], TimeoutFactory) and factories[1].timeoutPeriod == 30.0
    assert isinstance(factories[3], ThrottlingFactory)
    assert (factories[3].readLimit, factories[3].writeLimit) == (1000, 1000)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty wrapper name"),
        ("log,", "empty wrapper name"),
        ("=3", "empty wrapper name"),
        ("nope", "unknown wrapper 'nope' (known: delay, idle, limit, log"),
        ("idle", "wrapper 'idle': argument missing must be a number of seconds greater than 0"),
        ("idle=0", "wrapper 'idle': argument '0' must be"),
        ("idle=inf", "wrapper 'idle': argument 'inf' must be"),
        ("delay=soon", "wrapper 'delay': argument 'soon' must be"),
        ("limit=-5", "wrapper 'limit': argument '-5' must be a number of bytes per second"),
        ("log=everything", "wrapper 'log': argument 'everything' must be 'data' or left out"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parseWrappers(Clock(), spec)
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"wrap={spec!r}: ")


def test_idle_drops_silent_connections() -> None:
    clock = Clock()
    outer, app, transport = connect(parseWrappers(clock, "idle=5"))
    clock.advance(4)
    outer.dataReceived(b"still here")
    clock.advance(4)
    assert transport.connected
    clock.advance(1)
    assert not transport.connected
    assert app.lost.called


def test_delay_holds_each_direction_and_keeps_order() -> None:
    clock = Clock()
    outer, app, transport = connect(parseWrappers(clock, "delay=0.5"))
    app.transport.write(b"one ")  # type: ignore[union-attr]
    clock.advance(0.25)
    app.transport.writeSequence([b"two"])  # type: ignore[union-attr]
    outer.dataReceived(b"in")
    app.transport.loseConnection()  # type: ignore[union-attr]
    assert transport.value() == b"" and app.received == b""
    clock.advance(0.25)
    assert transport.value() == b"one " and transport.connected
    clock.advance(0.25)
    assert transport.value() == b"one two" and app.received == b"in"
    assert not transport.connected  # closed after the last delayed write


def test_delay_delivers_data_before_the_close() -> None:
    clock = Clock()
    outer, app, transport = connect(parseWrappers(clock, "delay=1"))
    outer.dataReceived(b"last words")
    transport.loseConnection()
    assert not app.lost.called
    clock.advance(1)
    assert app.received == b"last words" and app.lost.called


def test_delay_drops_the_connection_when_a_delayed_callback_raises() -> None:
    """
    As without the wrapper: the failure is logged and the connection
    dropped, and the application hears that it was lost.
    """
    clock = Clock()
    outer, app, transport = connect(parseWrappers(clock, "delay=1"))

    def refuse(data: bytes) -> None:
        raise ValueError("bad frame")

    app.dataReceived = refuse  # type: ignore[method-assign]
    outer.dataReceived(b"first")
    outer.dataReceived(b"second")
    with capturedLogs() as events:
        clock.advance(1)
    [logged] = [event for event in events if "log_failure" in event]
    assert logged["log_failure"].check(ValueError)
    assert "delay: a delayed callback of" in logged["log_format"].format(**logged)
    assert not transport.connected and app.lost.called
    assert not clock.getDelayedCalls()


def test_delay_tells_of_a_close_queued_behind_a_callback_that_raises() -> None:
    clock = Clock()
    outer, app, transport = connect(parseWrappers(clock, "delay=1"))
    app.dataReceived = lambda data: 1 / 0  # type: ignore[method-assign,assignment]
    outer.dataReceived(b"last words")
    transport.loseConnection()  # the peer closed: its news waits behind the data
    with capturedLogs():
        clock.advance(1)
    assert app.lost.called
    assert not clock.getDelayedCalls()


def test_limit_pauses_reading_over_the_rate() -> None:
    clock = Clock()
    outer, app, transport = connect(parseWrappers(clock, "limit=100"))
    outer.dataReceived(b"x" * 300)
    assert app.received == b"x" * 300
    clock.advance(1)
    assert transport.producerState == "paused"
    clock.advance(3)
    assert transport.producerState == "producing"
    transport.loseConnection()
    assert not clock.getDelayedCalls()


def test_log_reports_events_and_bytes() -> None:
    with capturedLogs() as events:
        outer, app, transport = connect(parseWrappers(Clock(), "log=data"))
        app.transport.write(b"ping")  # type: ignore[union-attr]
        outer.dataReceived(b"pong")
        transport.loseConnection()
    messages = [event["log_format"].format(**event) for event in events]
    assert any(m.startswith("connected ") for m in messages)
    assert any("sent 4 bytes: b'ping'" in m for m in messages)
    assert any("received 4 bytes: b'pong'" in m for m in messages)
    assert any("closed after 4 bytes in, 4 out" in m for m in messages)


def test_third_party_wrappers_are_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import twisted.plugins

    assert "test-add" not in availableWrappers()
    plugins = writePluginDirectory(tmp_path)
    monkeypatch.setattr(twisted.plugins, "__path__", [*twisted.plugins.__path__, str(plugins)])
    assert {"test-add", "test-xor", "log", "idle"} <= set(availableWrappers())
    assert availableWrappers()["log"] is BUILTIN["log"]
    _, app, transport = connect(parseWrappers(Clock(), "test-add=2,test-xor"))
    app.transport.write(b"\x01")  # type: ignore[union-attr]
    assert transport.value() == addEach(xorEach(b"\x01", 0x55), 2)
    with pytest.raises(ValueError, match="wrapper 'test-add': argument '300' must be 0 to 255"):
        parseWrappers(Clock(), "test-add=300")


def test_a_wrapper_is_any_callable() -> None:
    def passThrough(factory: IProtocolFactory) -> IProtocolFactory:
        return TimeoutFactory(factory, 60)

    outer, app, transport = connect([passThrough])
    outer.dataReceived(b"x")
    assert app.received == b"x"
    transport.loseConnection()
