"""
The masse: endpoints: parsing, resolving, failover, picking, wrappers,
cancellation and timeouts; over real TCP and UNIX sockets, an in-process
registry or a real redis-server, and peers in other processes.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from prometheus_client import REGISTRY
from twisted.application.internet import ClientService
from twisted.internet import reactor, tcp
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.base import DelayedCall
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    clientFromString,
    connectProtocol,
    serverFromString,
)
from twisted.internet.error import ConnectError, ConnectionRefusedError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody
from zope.interface import implementer

from tests.endpoint_helpers import (
    ByName,
    ChildProcess,
    Collector,
    Echo,
    Recording,
    addEach,
    adding,
    peerEnvironment,
    peerPort,
    portNumber,
    quote,
    spawnPeer,
    writePluginDirectory,
    xorEach,
    xoring,
)
from tests.helpers import eventually, freePort, sleep
from txmasse.endpoints import MasseClientEndpoint, MasseListeningPort, MasseServerEndpoint
from txmasse.errors import NoReachablePeer, PeerNotFound, RegistryUnavailable
from txmasse.records import PeerRecord, localHostIdentity
from txmasse.registry import EventKind, IRegistry, MemoryRegistry, PeerEvent, registryFromURL
from txmasse.resolver import Candidate, resolverFor

# Fixtures


@pytest.fixture
def memory() -> Iterator[MemoryRegistry]:
    registry = MemoryRegistry(reactor)
    yield registry
    pytest_twisted.blockon(registry.close())


@pytest.fixture
def redis_url(redis_server: Any) -> Iterator[str]:
    url = f"{redis_server.url}?timeout=2"
    yield url
    pytest_twisted.blockon(registryFromURL(reactor, url).close())


@pytest.fixture
def peers() -> Iterator[list[Any]]:
    """
    Peer processes, killed at the end of the test if still running.
    """
    spawned: list[Any] = []
    yield spawned
    for peer in spawned:
        peer.signal("KILL")
        pytest_twisted.blockon(peer.ended)


async def listen(
    ports: list[IListeningPort], registry: IRegistry, name: str = "echo", **kwargs: Any
) -> MasseListeningPort:
    kwargs.setdefault("endpoint", TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
    endpoint = MasseServerEndpoint(reactor, name, "t", registry=registry, **kwargs)
    port = await endpoint.listen(Recording(Echo))
    assert isinstance(port, MasseListeningPort)
    ports.append(port)
    return port


async def roundTrip(endpoint: Any, data: bytes = b"hello, peer") -> Collector:
    """
    Connect, send C{data}, wait for the echo; return the connected protocol.
    """
    protocol = await endpoint.connect(Factory.forProtocol(Collector))
    assert isinstance(protocol, Collector) and protocol.transport is not None
    protocol.transport.write(data)
    await eventually(lambda: protocol.received == data)
    return protocol


def close(protocol: IProtocol) -> Deferred[None]:
    assert isinstance(protocol, Collector) and protocol.transport is not None
    protocol.transport.loseConnection()
    return protocol.lost


def peerAddress(protocol: Any) -> Any:
    return protocol.transport.getPeer()


def masse(name: str, url: str, **options: str) -> str:
    """
    A masse: client or server description with the registry escaped.
    """
    extra = "".join(f":{key}={value}" for key, value in options.items())
    return f"masse:{name}:ns=t:registry={quote(url)}{extra}"


class Events(list[PeerEvent]):
    def __call__(self, event: PeerEvent) -> None:
        self.append(event)


# Parsing


def test_client_description_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASSE_NAMESPACE", "staging")
    for description in ["masse:name=db-server-1", "masse:db-server-1"]:
        endpoint = clientFromString(reactor, description)
        assert isinstance(endpoint, MasseClientEndpoint)
        assert (endpoint.name, endpoint.namespace) == ("db-server-1", "staging")
        assert endpoint.registry == "redis://127.0.0.1:1/0?timeout=0.5"  # $MASSE_REGISTRY
        assert (endpoint.pick, endpoint.proto, endpoint.timeout, endpoint.wrappers) == (
            "random",
            None,
            30.0,
            (),
        )
    endpoint = clientFromString(
        reactor,
        r"masse:db-server-1:ns=dev:registry=redis\://10.0.0.2\:6379/0:timeout=2.5"
        ":pick=roundrobin:proto=unix,tcp:wrap=log,idle=30,delay\\=0.1",
    )
    assert isinstance(endpoint, MasseClientEndpoint)
    assert (endpoint.name, endpoint.namespace) == ("db-server-1", "dev")
    assert endpoint.registry == "redis://10.0.0.2:6379/0"
    assert (endpoint.timeout, endpoint.pick, endpoint.proto) == (2.5, "roundrobin", ("unix", "tcp"))
    assert len(endpoint.wrappers) == 3
    glob = clientFromString(reactor, "masse:name=db-*:ns=dev")
    assert isinstance(glob, MasseClientEndpoint) and glob.name == "db-*"


def test_server_description_forms(tmp_path: Path) -> None:
    endpoint = serverFromString(
        reactor,
        "masse:name=db:ns=dev:meta.role=primary:meta.zone=a:ttl=3:advertise=db.example"
        f":unix={quote(str(tmp_path / 'db.sock'))}:wrap=log",
    )
    assert isinstance(endpoint, MasseServerEndpoint)
    assert (endpoint.name, endpoint.namespace, endpoint.ttl) == ("db", "dev", 3.0)
    assert endpoint.metadata == {"role": "primary", "zone": "a"}
    assert endpoint.advertise == "db.example"
    assert endpoint.unixPath == str(tmp_path / "db.sock")
    assert isinstance(endpoint.endpoint, TCP4ServerEndpoint)
    assert endpoint.endpoint._port == 0
    shorthand = serverFromString(reactor, "masse:db:port=8080:interface=127.0.0.1")
    assert isinstance(shorthand, MasseServerEndpoint)
    inner: Any = shorthand.endpoint
    assert (inner._port, inner._interface) == (8080, "127.0.0.1")
    unix = serverFromString(reactor, f"masse:db:listen=unix\\:{quote(str(tmp_path / 's'))}")
    assert isinstance(unix, MasseServerEndpoint)
    assert type(unix.endpoint).__name__ == "UNIXServerEndpoint"


@pytest_twisted.ensureDeferred
async def test_nested_ipv6_listen_escaped_once_as_documented(ports: list[IListeningPort]) -> None:
    """
    C{listen=tcp6\\:0\\:interface=\\:\\:1}, each ':' escaped once as the
    README says, listens on IPv6 loopback and is reachable by name.
    """
    registry = MemoryRegistry(reactor)
    endpoint = serverFromString(
        reactor, "masse:echo:ns=t:registry=memory\\://:listen=tcp6\\:0\\:interface=\\:\\:1"
    )
    assert isinstance(endpoint, MasseServerEndpoint)
    inner: Any = endpoint.endpoint
    assert (type(inner).__name__, inner._interface) == ("TCP6ServerEndpoint", "::1")
    endpoint.registry = registry
    port = await endpoint.listen(Factory.forProtocol(Echo))
    ports.append(port)
    [record] = await registry.lookup("t", "echo")
    assert record.endpoints == (f"tcp:host=\\:\\:1:port={portNumber(port)}",)
    client = MasseClientEndpoint(reactor, "echo", "t", registry=registry)
    await close(await roundTrip(client))


BAD_CLIENT = [
    ("masse:", "the name is missing"),
    ("masse:db:timeout=\u0663", "timeout='\u0663' is not a number"),  # an Arabic-Indic 3
    ("masse:ns=dev", "the name is missing"),
    ("masse:db server", "invalid name 'db server'"),
    ("masse:-db", "invalid name '-db'"),
    ("masse:db:name=web", "name given twice"),
    ("masse:db:web", "unexpected part 'web'"),
    ("masse:db:ns=a/b", "invalid namespace 'a/b'"),
    ("masse:db:colour=red", "unknown option 'colour'"),
    ("masse:db:timeout=soon", "timeout='soon' is not a number"),
    ("masse:db:timeout=-1", "timeout=-1: must be"),
    ("masse:db:timeout=0", "timeout=0: must be"),
    ("masse:db:timeout=nan", "timeout=nan: must be"),
    ("masse:db:pick=best", "pick='best': must be one of random, first, roundrobin"),
    ("masse:db:proto=udp", "unknown transport 'udp'"),
    ("masse:db:proto=tcp,", "proto='tcp,' has an empty item"),
    ("masse:db:wrap=zip", "unknown wrapper 'zip'"),
    ("masse:db:wrap=log,,idle=1", "empty wrapper name"),
    ("masse:db:wrap=idle=-3", "wrapper 'idle': argument '-3' must be"),
    ("masse:db:wrap=idle", "wrapper 'idle': argument missing must be"),
    ("masse:db:wrap=log=loud", "wrapper 'log': argument 'loud'"),
    ("masse:db:wrap=limit=fast", "wrapper 'limit': argument 'fast'"),
    ("masse:db:registry=http\\://x", "scheme 'http' is not one of"),
    ("masse:db:registry=redis\\://h\\:99999/0", "registry: invalid registry URL"),
    ("masse:db:registry=redis://h:1/0", "unexpected part '//h'"),
    ("masse:db-[:ns=dev", "invalid pattern 'db-['"),
]


@pytest.mark.parametrize(("description", "message"), BAD_CLIENT)
def test_bad_client_descriptions(description: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        clientFromString(reactor, description)
    assert str(caught.value).startswith("invalid masse: endpoint: ")
    assert message in str(caught.value)


BAD_SERVER = [
    ("masse:port=80", "the name is missing"),
    ("masse:db-*", "invalid name 'db-*'"),
    ("masse:db:ttl=0", "ttl=0: must be"),
    ("masse:db:ttl=forever", "ttl='forever' is not a number"),
    ("masse:db:port=http", "port='http' must be a whole number"),
    ("masse:db:port=70000", "port='70000'"),
    ("masse:db:port=\u0663", "port='\u0663' must be a whole number"),  # int() reads it as 3
    ("masse:db:port=\u00b2", "port='\u00b2' must be a whole number"),  # isdigit() takes it
    ("masse:db:interface=a b", "interface='a b'"),
    ("masse:db:listen=tcp\\:0:port=1", "give listen= or port=/interface=, not both"),
    ("masse:db:listen=carrier-pigeon\\:0", "listen='carrier-pigeon:0'"),
    ("masse:db:listen=tcp\\:0\\:colour=red", "listen='tcp:0:colour=red'"),
    ("masse:db:listen=masse\\:other", "cannot listen on a masse: endpoint"),
    ("masse:db:listen=unix\\:", "listen='unix:': no socket path"),
    ("masse:db:listen=tcp\\:99999", "listen='tcp:99999': port '99999' must be"),
    ("masse:db:advertise=a b", "advertise='a b'"),
    ("masse:db:meta.bad key=1", "invalid metadata key 'bad key'"),
    ("masse:db:meta.k=" + "x" * 2000, "invalid metadata value for 'k'"),
    ("masse:db:colour=red", "unknown option 'colour'"),
    ("masse:db:wrap=nope", "unknown wrapper 'nope'"),
    ("masse:db:registry=ftp\\://x", "scheme 'ftp'"),
]


@pytest.mark.parametrize(("description", "message"), BAD_SERVER)
def test_bad_server_descriptions(description: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        serverFromString(reactor, description)
    assert str(caught.value).startswith("invalid masse: endpoint: ")
    assert message in str(caught.value)


def test_bad_default_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASSE_REGISTRY", "redis://h:notaport/0")
    with pytest.raises(ValueError, match=r"\$MASSE_REGISTRY: invalid registry URL"):
        clientFromString(reactor, "masse:db")


# One process, in-memory registry


@pytest_twisted.ensureDeferred
async def test_server_registers_real_address_and_releases(
    memory: MemoryRegistry, ports: list[IListeningPort]
) -> None:
    events = Events()
    subscription = await memory.watch("t", "*", events)
    port = await listen(ports, memory, metadata={"role": "primary"})
    address = port.getHost()
    assert isinstance(address, IPv4Address) and address.port != 0
    [record] = await memory.lookup("t", "echo")
    assert record.endpoints == (f"tcp:host=127.0.0.1:port={address.port}",)
    assert record.metadata == {"role": "primary"}
    assert record == port.record
    client = MasseClientEndpoint(reactor, "echo", "t", registry=memory)
    await close(await roundTrip(client))

    await port.stopListening()
    assert [e.kind for e in events] == [EventKind.JOINED, EventKind.LEFT]
    assert await memory.lookup("t", "echo") == []
    with pytest.raises(ConnectError):
        await TCP4ClientEndpoint(reactor, "127.0.0.1", address.port).connect(Factory())
    subscription.stop()


@implementer(IRegistry)
class FailingRegistry(MemoryRegistry):
    url = "failing://"

    def register(self, record: PeerRecord, ttl: float) -> Any:
        raise ValueError("registry failing:// refused the record")


@pytest_twisted.ensureDeferred
async def test_failed_registration_stops_listening(tmp_path: Path) -> None:
    listened: list[Any] = []
    inner = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")

    @implementer(IStreamServerEndpoint)
    class Spy:
        async def _listen(self, factory: Any) -> IListeningPort:
            port: IListeningPort = await inner.listen(factory)
            listened.append(portNumber(port))
            return port

        def listen(self, factory: Any) -> Deferred[IListeningPort]:
            return Deferred.fromCoroutine(self._listen(factory))

    spy = Spy()
    unixPath = str(tmp_path / "s.sock")
    endpoint = MasseServerEndpoint(
        reactor, "db", "t", registry=FailingRegistry(reactor), endpoint=spy, unixPath=unixPath
    )
    with pytest.raises(ValueError, match="refused the record"):
        await endpoint.listen(Factory.forProtocol(Echo))
    [number] = listened
    with pytest.raises(ConnectError):
        await TCP4ClientEndpoint(reactor, "127.0.0.1", number).connect(Factory())
    assert not os.path.exists(unixPath)


@pytest_twisted.ensureDeferred
async def test_peer_not_found_names_everything(memory: MemoryRegistry) -> None:
    client = MasseClientEndpoint(reactor, "nobody", "t", registry=memory)
    with pytest.raises(PeerNotFound, match=r"'nobody' in namespace 't' \(registry memory://\)"):
        await client.connect(Factory.forProtocol(Collector))
    glob = MasseClientEndpoint(reactor, "nobody-*", "t", registry=memory)
    with pytest.raises(PeerNotFound, match="no peer matches 'nobody-\\*'"):
        await glob.connect(Factory.forProtocol(Collector))


def deadPort() -> int:
    """
    A loopback port nothing listens on.
    """
    return freePort()


@pytest_twisted.ensureDeferred
async def test_no_reachable_peer_lists_every_attempt(memory: MemoryRegistry) -> None:
    first, second = deadPort(), deadPort()
    await memory.register(PeerRecord("t", "db", [f"tcp:host=127.0.0.1:port={first}"]), 60)
    await memory.register(
        PeerRecord("t", "db", [f"tcp:host=127.0.0.1:port={second}", "nonsense:x"]), 60
    )
    await memory.register(PeerRecord("t", "db", ["unix:path=/x"], host="elsewhere"), 60)
    client = MasseClientEndpoint(reactor, "db", "t", registry=memory)
    with pytest.raises(NoReachablePeer) as caught:
        await client.connect(Factory.forProtocol(Collector))
    message = str(caught.value)
    assert message.startswith("could not reach 'db' in namespace 't' (registry memory://)")
    assert f"port={first}: Connection was refused" in message
    assert f"port={second}: Connection was refused" in message
    assert "nonsense:x: Unknown endpoint type: 'nonsense'" in message
    assert "no endpoint this client accepts among ['unix:path=/x']" in message


@pytest_twisted.ensureDeferred
async def test_failover_to_next_endpoint_and_instance(
    memory: MemoryRegistry, ports: list[IListeningPort]
) -> None:
    live = await listen(ports, memory, ttl=60)
    stale = PeerRecord(
        "t",
        "echo",
        [f"tcp:host=127.0.0.1:port={deadPort()}", f"tcp:host=127.0.0.1:port={deadPort()}"],
        registered=live.record.registered - 10,
    )
    await memory.register(stale, 60)
    client = MasseClientEndpoint(reactor, "echo", "t", registry=memory, pick="first")
    protocol = await roundTrip(client)
    assert peerPort(protocol) == portNumber(live)
    await close(protocol)


async def threeServers(memory: MemoryRegistry, ports: list[IListeningPort]) -> list[int]:
    """
    Three instances of 'echo', registered one second apart; their ports.
    """
    found = []
    for i in range(3):
        port = await listen(ports, memory)
        record = attrs.evolve(port.record, registered=1000.0 + i)
        await port.lease.update(record)
        found.append(portNumber(port))
    return found


async def peerPorts(client: MasseClientEndpoint, times: int) -> list[int]:
    seen = []
    for _ in range(times):
        protocol = await client.connect(Factory.forProtocol(Collector))
        seen.append(peerPort(protocol))
        await close(protocol)
    return seen


@pytest_twisted.ensureDeferred
async def test_pick_strategies(memory: MemoryRegistry, ports: list[IListeningPort]) -> None:
    a, b, c = await threeServers(memory, ports)
    first = MasseClientEndpoint(reactor, "echo", "t", registry=memory, pick="first")
    assert await peerPorts(first, 3) == [a, a, a]
    roundrobin = MasseClientEndpoint(reactor, "echo", "t", registry=memory, pick="roundrobin")
    assert await peerPorts(roundrobin, 4) == [a, b, c, a]
    randomly = MasseClientEndpoint(reactor, "echo", "t", registry=memory)
    randomly.selection.random.seed(3)
    seen = await peerPorts(randomly, 12)
    assert set(seen) == {a, b, c}


@pytest_twisted.ensureDeferred
async def test_roundrobin_passes_a_dead_instance_s_turn_to_the_next(
    memory: MemoryRegistry, ports: list[IListeningPort]
) -> None:
    """
    An instance that died silently (its lease lives on) keeps its place in
    the rotation; its turns go to the next instance, and the turns after
    them go on as before.
    """
    a, b, c = await threeServers(memory, ports)
    dead = next(p for p in ports if isinstance(p, MasseListeningPort) and portNumber(p) == b)
    ports.remove(dead)
    dead.lease.stop()
    await maybeDeferred(dead.port.stopListening)  # the lease stays
    roundrobin = MasseClientEndpoint(reactor, "echo", "t", registry=memory, pick="roundrobin")
    assert await peerPorts(roundrobin, 6) == [a, c, c, a, c, c]


@pytest_twisted.ensureDeferred
async def test_concurrent_roundrobin_connects_each_keep_their_turn(
    memory: MemoryRegistry, ports: list[IListeningPort]
) -> None:
    """
    A connect that meets a dead instance finds another from its own turn,
    not from the turns that connects started meanwhile have taken.
    """
    servers = []
    for i in range(4):
        server = await listen(ports, memory)
        await server.lease.update(attrs.evolve(server.record, registered=1000.0 + i))
        servers.append(server)
    a, _, c, d = (portNumber(server) for server in servers)
    dead = servers[1]
    ports.remove(dead)
    dead.lease.stop()
    await maybeDeferred(dead.port.stopListening)  # the lease stays
    client = MasseClientEndpoint(reactor, "echo", "t", registry=memory, pick="roundrobin")
    assert await peerPorts(client, 1) == [a]
    resolver = resolverFor(memory, reactor)
    await eventually(lambda: resolver.isWarm("t", "echo"))
    connecting = [client.connect(Factory.forProtocol(Collector)) for _ in range(4)]
    protocols = [await attempt for attempt in connecting]
    assert [peerPort(protocol) for protocol in protocols] == [c, c, d, a]
    for protocol in protocols:
        await close(protocol)


@pytest_twisted.ensureDeferred
async def test_glob_name_picks_among_matches(
    memory: MemoryRegistry, ports: list[IListeningPort]
) -> None:
    one = await listen(ports, memory, name="db-1")
    await listen(ports, memory, name="web-1")
    client = MasseClientEndpoint(reactor, "db-*", "t", registry=memory)
    protocol = await roundTrip(client)
    assert peerPort(protocol) == portNumber(one)
    await close(protocol)


@pytest_twisted.ensureDeferred
async def test_unix_socket_preferred_on_same_host(
    memory: MemoryRegistry, ports: list[IListeningPort], tmp_path: Path
) -> None:
    path = str(tmp_path / "echo.sock")
    port = await listen(ports, memory, unixPath=path)
    tcpAddress = f"tcp:host=127.0.0.1:port={portNumber(port)}"
    assert port.record.endpoints == (f"unix:path={path}", tcpAddress)
    assert port.record.host == localHostIdentity()

    default = MasseClientEndpoint(reactor, "echo", "t", registry=memory)
    protocol = await roundTrip(default)
    assert isinstance(peerAddress(protocol), UNIXAddress)
    await close(protocol)

    tcpFirst = MasseClientEndpoint(reactor, "echo", "t", registry=memory, proto=["tcp", "unix"])
    protocol = await roundTrip(tcpFirst)
    assert isinstance(peerAddress(protocol), IPv4Address)
    await close(protocol)

    # The same record from another host: its socket path means nothing here.
    await port.lease.update(attrs.evolve(port.record, host="another-host"))
    protocol = await roundTrip(default)
    assert isinstance(peerAddress(protocol), IPv4Address)
    await close(protocol)
    unixOnly = MasseClientEndpoint(reactor, "echo", "t", registry=memory, proto=["unix"])
    with pytest.raises(NoReachablePeer, match="no endpoint this client accepts"):
        await unixOnly.connect(Factory.forProtocol(Collector))


@pytest_twisted.ensureDeferred
async def test_wrappers_apply_in_order_and_connect_returns_the_app_protocol(
    memory: MemoryRegistry, ports: list[IListeningPort]
) -> None:
    stack = [adding(1), xoring(0x0F)]
    port = await listen(ports, memory, wrappers=stack)
    client = MasseClientEndpoint(reactor, "echo", "t", registry=memory, wrappers=stack)
    protocol = await roundTrip(client, b"\x00abc")
    await close(protocol)

    # On the wire: the first wrapper's encoding is outermost.
    raw = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", portNumber(port)), Collector()
    )
    assert isinstance(raw, Collector) and raw.transport is not None
    wire = addEach(xorEach(b"\x00abc", 0x0F), 1)
    assert wire != xorEach(addEach(b"\x00abc", 1), 0x0F)
    raw.transport.write(wire)
    await eventually(lambda: raw.received == wire)
    await close(raw)


@pytest_twisted.ensureDeferred
async def test_no_wrappers_nothing_in_between(
    memory: MemoryRegistry, ports: list[IListeningPort]
) -> None:
    factory = Recording(Echo)
    endpoint = MasseServerEndpoint(
        reactor,
        "echo",
        "t",
        registry=memory,
        endpoint=TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
    )
    ports.append(await endpoint.listen(factory))
    client = MasseClientEndpoint(reactor, "echo", "t", registry=memory)
    protocol = await roundTrip(client)
    assert isinstance(protocol.transport, tcp.Client)
    assert isinstance(factory.built[0].transport, tcp.Server)
    await close(protocol)


# Cancellation and timeouts, on a fake reactor


def fakeClient(
    clock: MemoryReactorClock, registry: IRegistry, timeout: float | None = 5
) -> MasseClientEndpoint:
    return MasseClientEndpoint(clock, "db", "t", registry=registry, timeout=timeout)


def test_cancel_stops_the_attempt_in_progress() -> None:
    clock = MemoryReactorClock()
    registry = MemoryRegistry(clock)
    registry.register(PeerRecord("t", "db", ["tcp:host=10.0.0.1:port=4000"]), 60)

    def pending() -> set[IDelayedCall]:
        return {call for call in clock.getDelayedCalls() if call.active()}

    registryOwn = pending()  # its lease's heartbeat and its sweep
    connecting = fakeClient(clock, registry).connect(Factory.forProtocol(Collector))
    [connector] = clock.connectors
    assert not connector.stoppedConnecting
    connecting.cancel()
    assert connector.stoppedConnecting
    failures: list[Any] = []
    connecting.addErrback(failures.append)
    assert failures[0].check(CancelledError)
    clock.advance(1)  # inside the 5 s deadline; the resolver starts watching the name
    assert pending() == registryOwn, "the cancelled attempt left a timer behind"
    clock.advance(10)
    assert len(clock.connectors) == 1 and connecting.called
    registry.close()


@implementer(IStreamClientEndpoint)
class Unstoppable:
    """
    An endpoint of someone else's whose Deferred cannot be stopped: it has
    no canceller (C{canceller=None}), or one that raises; it connects
    whenever the test says.
    """

    def __init__(self, canceller: Callable[[Deferred[Any]], None] | None = None) -> None:
        self.canceller = canceller
        self.factories: list[Any] = []

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        self.factories.append(protocolFactory)
        return Deferred(self.canceller)


def foreignClient(clock: MemoryReactorClock, endpoint: Unstoppable) -> MasseClientEndpoint:
    registry = MemoryRegistry(clock)
    registry.register(PeerRecord("t", "db", ["other:somewhere"]), 60)
    client = fakeClient(clock, registry, timeout=3)
    client.endpointFor = lambda candidate, registry: endpoint  # type: ignore[method-assign]
    return client


def test_a_connection_made_after_the_connect_timed_out_is_dropped() -> None:
    """
    An endpoint that goes on connecting after its attempt was cancelled
    gets a protocol that drops the connection, not the application's.
    """
    clock, endpoint = MemoryReactorClock(), Unstoppable()
    built: list[Collector] = []

    class Counted(Factory):
        def buildProtocol(self, addr: object) -> Collector:
            built.append(Collector())
            return built[-1]

    connecting = foreignClient(clock, endpoint).connect(Counted())
    clock.advance(3)
    failures: list[Any] = []
    connecting.addErrback(failures.append)
    assert failures[0].check(NoReachablePeer) and "within 3s" in str(failures[0].value)
    protocol = endpoint.factories[0].buildProtocol(IPv4Address("TCP", "10.0.0.1", 4000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert built == [] and transport.disconnecting


def test_an_endpoint_whose_cancel_raises_still_times_out() -> None:
    def refuse(_: Deferred[Any]) -> None:
        raise RuntimeError("cannot stop now")

    clock, endpoint = MemoryReactorClock(), Unstoppable(refuse)
    with capturedLogs() as events:
        connecting = foreignClient(clock, endpoint).connect(Factory.forProtocol(Collector))
        clock.advance(3)
    failures: list[Any] = []
    connecting.addErrback(failures.append)
    assert failures[0].check(NoReachablePeer) and "within 3s" in str(failures[0].value)
    [logged] = [event for event in events if "log_failure" in event]
    assert logged["log_failure"].check(RuntimeError)
    assert "cancelling connecting to other:somewhere failed" in formatEvent(logged)


@pytest.mark.parametrize(
    ("description", "connected"),
    [
        ("tcp:host=10.0.0.1:port=4000", ("10.0.0.1", 4000, 2.5, None)),
        ("tcp:10.0.0.1:4000", ("10.0.0.1", 4000, 2.5, None)),
        ("tcp:host=\\:\\:1:port=5", ("::1", 5, 2.5, None)),
        ("tcp:host=h:port=5:bindAddress=10.0.0.2", ("h", 5, 2.5, ("10.0.0.2", 0))),
    ],
)
def test_tcp_endpoints_take_the_deadline_as_their_timeout(
    description: str, connected: tuple[object, ...]
) -> None:
    """
    A plain C{tcp:} description gets the client's timeout, fractions
    included, as its connect timeout (C{clientFromString} takes whole
    seconds only), and counts as the client's own endpoint.
    """
    clock = MemoryReactorClock()
    registry = MemoryRegistry(clock)
    client = MasseClientEndpoint(clock, "db", "t", registry=registry, timeout=2.5)
    record = PeerRecord("t", "db", [description])
    endpoint = client.endpointFor(Candidate(record, description), registry)
    assert client.ownEndpoint(endpoint)
    endpoint.connect(Factory.forProtocol(Collector))
    host, port, _, timeout, bind = clock.tcpClients[-1]
    assert (host, port, timeout, bind) == connected
    registry.close()


@pytest.mark.parametrize(
    ("description", "timeout"), [("tcp:host=h:port=5:timeout=9", 9), ("tcp:h:5:timeout=1", 1)]
)
def test_a_description_with_a_timeout_of_its_own_keeps_it(description: str, timeout: int) -> None:
    """
    A description that names its own timeout is built by
    C{clientFromString} and is not one of the client's own: its connects
    run under the connect's timer.
    """
    clock = MemoryReactorClock()
    registry = MemoryRegistry(clock)
    client = MasseClientEndpoint(clock, "db", "t", registry=registry, timeout=2.5)
    record = PeerRecord("t", "db", [description])
    endpoint = client.endpointFor(Candidate(record, description), registry)
    assert not client.ownEndpoint(endpoint)
    endpoint.connect(Factory.forProtocol(Collector))
    assert clock.tcpClients[-1][3] == timeout
    registry.close()


def test_unix_endpoints_take_the_deadline_as_their_timeout() -> None:
    clock = MemoryReactorClock()
    registry = MemoryRegistry(clock)
    client = MasseClientEndpoint(clock, "db", "t", registry=registry, timeout=0.5)
    for description in ("unix:/run/db.sock", "unix:path=/run/db.sock"):
        record = PeerRecord("t", "db", [description])
        endpoint = client.endpointFor(Candidate(record, description), registry)
        assert client.ownEndpoint(endpoint)
        endpoint.connect(Factory.forProtocol(Collector))
        path, _, timeout, checkPID = clock.unixClients[-1]
        assert (path, timeout, checkPID) == ("/run/db.sock", 0.5, False)
    registry.close()


def test_timeout_while_connecting() -> None:
    """
    Looked up at once, the attempt's own connect timeout is the deadline:
    the connect keeps no timer of its own.
    """
    clock = MemoryReactorClock()
    registry = MemoryRegistry(clock)
    registry.register(PeerRecord("t", "db", ["tcp:host=10.0.0.1:port=4000"]), 60)
    before = {call for call in clock.getDelayedCalls() if call.active()}
    connecting = fakeClient(clock, registry).connect(Factory.forProtocol(Collector))
    failures: list[Any] = []
    connecting.addErrback(failures.append)
    started = {call for call in clock.getDelayedCalls() if call.active()} - before
    names = [call.func.__name__ for call in started if isinstance(call, DelayedCall)]
    assert names == ["_watch"]  # the resolver's, not a timer
    [(_, _, factory, timeout, _)] = clock.tcpClients
    [connector] = clock.connectors
    assert timeout == 5
    clock.advance(4.9)
    assert failures == []
    clock.advance(0.1)
    connector.stopConnecting()  # as Twisted's connector does at its timeout
    factory.clientConnectionFailed(connector, Failure(ConnectTimeout()))
    failures[0].trap(NoReachablePeer)
    assert failures[0].getErrorMessage() == (
        "no connection to 'db' in namespace 't' (registry memory://) within 5s: "
        "gave up connecting to tcp:host=10.0.0.1:port=4000"
    )
    registry.close()


@implementer(IRegistry)
class SilentRegistry:
    """
    A registry that never answers.
    """

    url = "silent://"
    closed = False

    def __init__(self) -> None:
        self.cancelled: list[Deferred[Any]] = []  # the lookups cancelled, in order

    def register(self, record: PeerRecord, ttl: float) -> Deferred[Any]:
        return Deferred()

    def lookup(
        self, namespace: str, name: str, stale: float | None = None
    ) -> Deferred[list[PeerRecord]]:
        self.asked: Deferred[list[PeerRecord]] = Deferred(self.cancelled.append)
        return self.asked

    def find(self, namespace: str, pattern: str) -> Deferred[list[PeerRecord]]:
        self.asked = Deferred()
        return self.asked

    def leases(self, namespace: str, pattern: str) -> Deferred[Any]:
        return Deferred()

    def watch(
        self,
        namespace: str,
        pattern: str,
        callback: Callable[..., object],
        usage: bool = False,
    ) -> Deferred[Any]:
        return Deferred()

    def report(self, event: Any) -> Deferred[None]:
        return Deferred()

    def close(self) -> Deferred[None]:
        return Deferred()


class SlowRegistry(SilentRegistry):
    """
    A registry whose calls give up after C{callTimeout} seconds.
    """

    def __init__(self, callTimeout: float):
        super().__init__()
        self.callTimeout = callTimeout


def test_a_registry_that_gives_up_sooner_times_the_lookup() -> None:
    clock = MemoryReactorClock()
    registry = SlowRegistry(callTimeout=2)
    fakeClient(clock, registry, timeout=5).connect(Factory.forProtocol(Collector))
    assert not registry.asked.called
    assert not [call for call in clock.getDelayedCalls() if call.active()]


@pytest.mark.parametrize(
    ("callTimeout", "name"),
    [(None, "db"), (10, "db"), (2, "db"), (1, "db-*")],
    ids=["not-said", "later", "as-late", "a-find-of-many-calls"],
)
def test_a_registry_that_may_give_up_later_is_timed_by_the_connect(
    callTimeout: float | None, name: str
) -> None:
    clock = MemoryReactorClock()
    registry = SilentRegistry() if callTimeout is None else SlowRegistry(callTimeout)
    client = MasseClientEndpoint(clock, name, "t", registry=registry, timeout=2)
    connecting = client.connect(Factory.forProtocol(Collector))
    clock.advance(2)
    failures: list[Any] = []
    connecting.addErrback(failures.append)
    failures[0].trap(NoReachablePeer)
    assert "within 2s: gave up waiting for the registry" in failures[0].getErrorMessage()
    assert registry.asked.called  # cancelled


THE_ONLY_INSTANCE = PeerRecord("t", "db", ["tcp:host=10.0.0.1:port=4000"])


def walked(clock: MemoryReactorClock, client: MasseClientEndpoint, before: int) -> None:
    """
    C{before} connects by C{client} (0 or 1), over a L{SlowRegistry}: the
    registry answers with L{THE_ONLY_INSTANCE} at once, and the attempt is
    refused. After one, the next connect is a walk of that same instance
    again (L{txmasse._client._walkFirst}).
    """
    registry: Any = client.registry
    for _ in range(before):
        failures: list[Failure] = []
        client.connect(Factory.forProtocol(Collector)).addErrback(failures.append)
        registry.asked.callback([THE_ONLY_INSTANCE])
        refused(clock)
        [failure] = failures
        failure.trap(NoReachablePeer)
    assert (client._lastWalk is not None) == bool(before)


def refused(clock: MemoryReactorClock) -> None:
    """
    The last attempt made on C{clock} fails, refused.
    """
    connector, factory = clock.connectors[-1], clock.tcpClients[-1][2]
    factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))


FIRST_OR_WALKED = pytest.mark.parametrize("before", [0, 1], ids=["first", "walked-again"])


@FIRST_OR_WALKED
def test_a_slow_answer_leaves_the_attempt_what_is_left_of_the_deadline(before: int) -> None:
    """
    A lookup that took longer than the slack: the attempt's own connect
    timeout would end past the deadline, so the connect times it.
    """
    clock = MemoryReactorClock()
    registry = SlowRegistry(callTimeout=2)
    client = fakeClient(clock, registry, timeout=5)
    walked(clock, client, before)
    connecting = client.connect(Factory.forProtocol(Collector))
    failures: list[Any] = []
    connecting.addErrback(failures.append)
    clock.advance(1.5)
    registry.asked.callback([THE_ONLY_INSTANCE])
    connector = clock.connectors[-1]
    clock.advance(3.4)
    assert failures == [] and not connector.stoppedConnecting
    clock.advance(0.1)
    assert connector.stoppedConnecting
    failures[0].trap(NoReachablePeer)
    assert failures[0].getErrorMessage().endswith(
        "within 5s: gave up connecting to tcp:host=10.0.0.1:port=4000"
    )


@FIRST_OR_WALKED
@pytest.mark.parametrize("cache", [True, False], ids=["cache-miss", "cold"])
def test_a_cold_connect_that_the_registry_fails_fails_with_its_error(
    before: int, cache: bool
) -> None:
    clock = MemoryReactorClock()
    registry = SlowRegistry(callTimeout=2)
    client = MasseClientEndpoint(clock, "db", "t", registry=registry, timeout=5, cache=cache)
    walked(clock, client, before)
    tried = len(clock.connectors)
    failures: list[Any] = []
    client.connect(Factory.forProtocol(Collector)).addErrback(failures.append)
    labels = {"namespace": "t", "name": "db", "outcome": "unavailable"}
    counted = REGISTRY.get_sample_value("masse_connects_total", labels) or 0.0
    registry.asked.errback(RegistryUnavailable("registry silent://: no answer within 2s"))
    [failure] = failures
    failure.trap(RegistryUnavailable)
    assert failure.getErrorMessage() == "registry silent://: no answer within 2s"
    assert len(clock.connectors) == tried
    assert REGISTRY.get_sample_value("masse_connects_total", labels) == counted + 1


@FIRST_OR_WALKED
def test_a_cold_connect_cancelled_while_the_registry_is_asked_cancels_the_lookup(
    before: int,
) -> None:
    clock = MemoryReactorClock()
    registry = SlowRegistry(callTimeout=2)
    client = fakeClient(clock, registry, timeout=5)
    walked(clock, client, before)
    tried = len(clock.connectors)
    connecting = client.connect(Factory.forProtocol(Collector))
    connecting.cancel()
    failures: list[Any] = []
    connecting.addErrback(failures.append)
    [failure] = failures
    failure.trap(CancelledError)
    assert registry.cancelled == [registry.asked]
    assert len(clock.connectors) == tried


@FIRST_OR_WALKED
def test_a_cold_connect_cancelled_while_connecting_stops_the_attempt(before: int) -> None:
    clock = MemoryReactorClock()
    registry = SlowRegistry(callTimeout=2)
    client = fakeClient(clock, registry, timeout=5)
    walked(clock, client, before)
    connecting = client.connect(Factory.forProtocol(Collector))
    registry.asked.callback([THE_ONLY_INSTANCE])
    connector = clock.connectors[-1]
    connecting.cancel()
    assert connector.stoppedConnecting
    refused(clock)  # as Twisted's connector does once stopped
    failures: list[Any] = []
    connecting.addErrback(failures.append)
    [failure] = failures
    failure.trap(CancelledError)


@FIRST_OR_WALKED
def test_a_cold_roundrobin_connect_takes_its_turn(before: int) -> None:
    clock = MemoryReactorClock()
    registry = SlowRegistry(callTimeout=2)
    client = MasseClientEndpoint(clock, "db", "t", registry=registry, pick="roundrobin")
    walked(clock, client, before)
    other = PeerRecord("t", "db", ["tcp:host=10.0.0.2:port=4000"])
    client.connect(Factory.forProtocol(Collector))
    registry.asked.callback([THE_ONLY_INSTANCE, other])  # ordered afresh, by this turn
    [first, _] = client.selection.candidates([THE_ONLY_INSTANCE, other], before, "")
    assert first.description == f"tcp:host={clock.tcpClients[-1][0]}:port=4000"
    client.connect(Factory.forProtocol(Collector))  # the one after it took the next turn
    assert client.selection.takeTurn() == before + 2


class RaisingRegistry(SlowRegistry):
    """
    A registry whose C{lookup} raises (a bug of its own) once told to.
    """

    raises = False

    def lookup(
        self, namespace: str, name: str, stale: float | None = None
    ) -> Deferred[list[PeerRecord]]:
        if self.raises:
            raise RuntimeError("the registry's bug")
        return super().lookup(namespace, name, stale)


@FIRST_OR_WALKED
@pytest.mark.parametrize("cache", [True, False], ids=["cache-miss", "cold"])
def test_a_registry_whose_lookup_raises_fails_the_connect(before: int, cache: bool) -> None:
    clock = MemoryReactorClock()
    registry = RaisingRegistry(callTimeout=2)
    client = MasseClientEndpoint(
        clock, "db", "t", registry=registry, timeout=5, cache=cache, pick="roundrobin"
    )
    walked(clock, client, before)
    registry.raises = True
    labels = {"namespace": "t", "name": "db", "outcome": "error"}
    counted = REGISTRY.get_sample_value("masse_connects_total", labels) or 0.0
    failures: list[Any] = []
    client.connect(Factory.forProtocol(Collector)).addErrback(failures.append)
    [failure] = failures
    failure.trap(RuntimeError)
    assert failure.getErrorMessage() == "the registry's bug"
    assert REGISTRY.get_sample_value("masse_connects_total", labels) == counted + 1
    assert client.selection.takeTurn() == before + 1  # it took its turn


def test_no_timeout_waits_for_the_caller() -> None:
    clock = MemoryReactorClock()
    registry = SilentRegistry()
    connecting = fakeClient(clock, registry, timeout=None).connect(Factory.forProtocol(Collector))
    clock.advance(1e6)
    assert not connecting.called
    connecting.cancel()
    connecting.addErrback(lambda f: f.trap(CancelledError))


@pytest_twisted.ensureDeferred
async def test_registry_unavailable_passes_through() -> None:
    client = clientFromString(reactor, "masse:db:ns=t")  # $MASSE_REGISTRY: nothing listens
    try:
        with pytest.raises(RegistryUnavailable, match=r"redis://127\.0\.0\.1:1/0"):
            await client.connect(Factory.forProtocol(Collector))
    finally:
        await registryFromURL(reactor).close()


# Real Redis, peers in other processes


@pytest_twisted.ensureDeferred
async def test_two_processes_by_name(redis_url: str, peers: list[Any]) -> None:
    peer = spawnPeer(masse("echo", redis_url), peerEnvironment(redis_url))
    peers.append(peer)
    await peer.ready
    client = clientFromString(reactor, masse("echo", redis_url, timeout="10"))
    protocol = await roundTrip(client, b"across processes \x00\xff")
    await close(protocol)
    peer.signal("TERM")
    await peer.ended
    registry = registryFromURL(reactor, redis_url)
    assert await registry.lookup("t", "echo") == []  # released on a clean stop


@pytest_twisted.ensureDeferred
async def test_named_wrappers_in_order_across_processes(
    redis_url: str, peers: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import twisted.plugins

    plugins = writePluginDirectory(tmp_path)
    monkeypatch.setattr(twisted.plugins, "__path__", [*twisted.plugins.__path__, str(plugins)])
    wrap = "test-add=1,test-xor=15"
    peer = spawnPeer(masse("echo", redis_url, wrap=wrap), peerEnvironment(redis_url, tmp_path))
    peers.append(peer)
    port = await peer.ready
    client = clientFromString(reactor, masse("echo", redis_url, wrap=wrap))
    protocol = await roundTrip(client, b"\x00wrapped")
    await close(protocol)

    raw = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Collector())
    assert isinstance(raw, Collector) and raw.transport is not None
    wire = addEach(xorEach(b"\x00wrapped", 15), 1)
    raw.transport.write(wire)
    await eventually(lambda: raw.received == wire)
    await close(raw)


@pytest_twisted.ensureDeferred
async def test_failover_from_a_dead_process(redis_url: str, peers: list[Any]) -> None:
    env = peerEnvironment(redis_url)
    gone = spawnPeer(masse("echo", redis_url, ttl="60"), env)
    peers.append(gone)
    gonePort = await gone.ready  # registered before the next one starts: pick=first tries it
    alive = spawnPeer(masse("echo", redis_url, ttl="60"), env)
    peers.append(alive)
    alivePort = await alive.ready
    gone.signal("KILL")
    await gone.ended
    registry = registryFromURL(reactor, redis_url)
    assert len(await registry.lookup("t", "echo")) == 2  # the dead one's lease has not expired
    client = clientFromString(reactor, masse("echo", redis_url, pick="first"))
    with capturedLogs() as events:
        protocol = await roundTrip(client)
    assert peerPort(protocol) == alivePort
    failed = [formatEvent(event) for event in events if "failed" in event["log_format"]]
    assert len(failed) == 1 and f"port={gonePort} failed (Connection was refused" in failed[0]
    await close(protocol)


@pytest_twisted.ensureDeferred
async def test_client_service_follows_a_peer_that_moved(redis_url: str) -> None:
    server = serverFromString(reactor, masse("echo", redis_url, port="0", interface="127.0.0.1"))
    echoes = Recording(Echo)
    first = await server.listen(echoes)
    client = clientFromString(reactor, masse("echo", redis_url))
    clients = Recording(Collector)
    service = ClientService(client, clients, retryPolicy=lambda attempt: 0.05)
    service.startService()
    try:
        protocol = await service.whenConnected()
        firstPort = portNumber(first)
        assert peerPort(protocol) == firstPort

        # The peer restarts on another port: old connection dropped, name re-registered.
        await first.stopListening()
        echoes.built[0].transport.loseConnection()  # type: ignore[union-attr]
        second = await server.listen(echoes)
        assert portNumber(second) != firstPort

        def movedConnection() -> bool:
            last = clients.built[-1]
            return last.transport is not None and peerPort(last) == portNumber(second)

        await eventually(movedConnection, timeout=10)
        await second.stopListening()
    finally:
        await service.stopService()


@pytest.mark.filterwarnings("ignore:Using readBody with a transport")  # Twisted's own proxy (#8227)
@pytest_twisted.ensureDeferred
async def test_twistd_web_listens_by_name(redis_url: str, tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello by name\n")
    twistd = shutil.which("twistd", path=os.path.dirname(sys.executable)) or "twistd"
    description = "masse:name=www:ns=t"  # the registry comes from $MASSE_REGISTRY
    args = [twistd, "-n", "--pidfile=", "web", "--listen", description, "--path", str(tmp_path)]
    process = ChildProcess()
    reactor.spawnProcess(process, twistd, args, env=peerEnvironment(redis_url), path=str(tmp_path))
    registry = registryFromURL(reactor, redis_url)
    try:
        found: list[PeerRecord] = []
        for _ in range(150):
            found = await registry.lookup("t", "www")
            if found or process.ended.called:
                break
            await sleep(0.1)
        assert found, f"twistd did not register:\n{process.output.decode()[-3000:]}"
        agent = Agent.usingEndpointFactory(reactor, ByName(redis_url))
        response = await agent.request(b"GET", b"http://www/hello.txt")
        assert response.code == 200
        assert await readBody(response) == b"hello by name\n"
    finally:
        process.signal("TERM")
        await process.ended
    assert await registry.lookup("t", "www") == []
