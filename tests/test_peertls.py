"""
Peer TLS bound to the name: servers with certificates for NAME.NAMESPACE,
clients that verify them against the CA and the name of the instance they
connect to; mutual TLS; and every impostor refused, naming what it showed.
Real sockets and certificates; an in-process registry, and Redis once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    clientFromString,
    serverFromString,
)
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from tests.certs import Authority
from tests.endpoint_helpers import Collector, Echo, Recording, quote
from tests.helpers import eventually, newRegistry
from txmasse.endpoints import MasseClientEndpoint, MasseListeningPort, MasseServerEndpoint
from txmasse.errors import NoReachablePeer
from txmasse.peertls import (
    PeerTLS,
    PeerTLSError,
    certificateName,
    parseTLSDescription,
)
from txmasse.records import PeerRecord
from txmasse.registry import IRegistry, MemoryRegistry, registryFromURL
from txmasse.resolver import resolverFor
from txmasse.verify import checkCertificateName

# Fixtures


@attrs.frozen
class Certs:
    """
    A CA and the certificates a test needs, as files.
    """

    ca: Authority
    other: Authority  # a CA nobody trusts

    def issue(self, common: str, sans: list[str] | None = None) -> tuple[str, str]:
        cert, key = self.ca.issue(common, sans)
        return str(cert), str(key)

    def combined(self, common: str) -> str:
        """
        One file holding the certificate and then its key.
        """
        cert, key = self.ca.issue(common)
        both = cert.with_suffix(".pem")
        both.write_bytes(cert.read_bytes() + key.read_bytes())
        return str(both)

    @property
    def caPath(self) -> str:
        return str(self.ca.caPath)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("certs")
    return Certs(Authority.create(directory), Authority.create(directory, "impostor CA"))


@pytest.fixture
def memory() -> Iterator[MemoryRegistry]:
    registry = MemoryRegistry(reactor)
    yield registry
    pytest_twisted.blockon(registry.close())


class Seeing(Collector):
    """
    Notes the peer's certificate when connected: the application must only
    ever be connected once the handshake is over.
    """

    def connectionMade(self) -> None:
        transport: Any = self.transport
        certificate = transport.getPeerCertificate()
        self.peer = None if certificate is None else certificate.to_cryptography()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason.value
        super().connectionLost(reason)


class SeeingEcho(Echo):
    def connectionMade(self) -> None:
        transport: Any = self.transport
        certificate = transport.getPeerCertificate()
        self.peer = None if certificate is None else certificate.to_cryptography()


def subject(certificate: Any) -> str:
    return str(certificate.subject.rfc4514_string())


async def serve(
    ports: list[IListeningPort],
    registry: IRegistry,
    tls: PeerTLS,
    name: str = "db",
    namespace: str = "t",
) -> tuple[MasseListeningPort, Recording]:
    """
    A genuine TLS peer, through L{MasseServerEndpoint}.
    """
    endpoint = MasseServerEndpoint(
        reactor,
        name,
        namespace,
        registry=registry,
        endpoint=TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
        tls=tls,
    )
    served = Recording(SeeingEcho)
    port = await endpoint.listen(served)
    assert isinstance(port, MasseListeningPort)
    ports.append(port)
    return port, served


async def impostor(
    ports: list[IListeningPort],
    registry: IRegistry,
    factory: IProtocolFactory,
    scheme: str = "tls",
    name: str = "db",
) -> None:
    """
    Someone else's program registering C{name}: it listens with whatever
    C{factory} is (TLS with its own certificate, or plain TCP) and writes
    its record straight into the registry.
    """
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    ports.append(port)
    address: Any = port.getHost()
    record = PeerRecord("t", name, [f"{scheme}:host=127.0.0.1:port={address.port}"])
    await registry.register(record, ttl=30)


def impostorTLS(cert: str, key: str) -> PeerTLS:
    return PeerTLS.fromFiles(cert=cert, key=key)


def client(registry: IRegistry, tls: PeerTLS | None, **kwargs: Any) -> MasseClientEndpoint:
    return MasseClientEndpoint(reactor, "db", "t", registry=registry, timeout=5, tls=tls, **kwargs)


async def refusal(endpoint: MasseClientEndpoint) -> str:
    """
    Connect, expecting refusal; return the error message.
    """
    with pytest.raises(NoReachablePeer) as caught:
        await endpoint.connect(Factory.forProtocol(Collector))
    message = str(caught.value)
    assert "\n" not in message
    return message


def connectedTo(served: Recording) -> list[Protocol]:
    """
    The server's protocols that were ever connected.
    """
    return [protocol for protocol in served.built if hasattr(protocol, "peer")]


async def hangUp(protocol: Any) -> None:
    protocol.transport.loseConnection()
    await protocol.lost


async def echoOver(protocol: Any, data: bytes = b"over TLS") -> None:
    protocol.transport.write(data)
    await eventually(lambda: protocol.received == data)


# The genuine peer


@pytest_twisted.ensureDeferred
async def test_tls_peer_by_name_from_strings(certs: Certs) -> None:
    """
    cert= (with the key in the same file) serves TLS and advertises tls:;
    a ca= client reaches it, and its protocol is connected only once the
    server's certificate is known.
    """
    url = quote("memory://")
    server = serverFromString(
        reactor,
        f"masse:db:ns=t:registry={url}:interface=127.0.0.1:cert={quote(certs.combined('db.t'))}",
    )
    served = Recording(SeeingEcho)
    port = await server.listen(served)
    try:
        assert isinstance(port, MasseListeningPort)
        [description] = port.record.endpoints
        assert description.startswith("tls:host=127.0.0.1:port=")
        endpoint = clientFromString(
            reactor, f"masse:db:ns=t:registry={url}:ca={quote(certs.caPath)}:timeout=5"
        )
        assert isinstance(endpoint, MasseClientEndpoint) and endpoint.tls is not None
        protocol: Any = await endpoint.connect(Factory.forProtocol(Seeing))
        assert isinstance(protocol, Seeing)
        assert subject(protocol.peer) == "CN=db.t"
        await echoOver(protocol)
        [seen] = connectedTo(served)
        assert getattr(seen, "peer", "unset") is None  # no client certificate asked for
        await hangUp(protocol)
    finally:
        await port.stopListening()
        await registryFromURL(reactor, "memory://").close()


@pytest_twisted.ensureDeferred
async def test_half_close_keeps_the_answer(
    certs: Certs, memory: MemoryRegistry, ports: list[Any]
) -> None:
    """
    Like TCP's half-close (C{nc -N}, C{masse connect}): a request, then
    close_notify at once; the answer still arrives, then the close. Twisted's
    TLS would cut the session (TCP half-close underneath) or drop the answer
    (writes held for the next reactor turn, then discarded by the close).
    """
    cert, key = certs.issue("db.t")
    await serve(ports, memory, PeerTLS.fromFiles(cert=cert, key=key))
    endpoint = client(memory, PeerTLS.fromFiles(ca=certs.caPath))
    for _ in range(10):
        protocol: Any = await endpoint.connect(Factory.forProtocol(Collector))
        protocol.transport.write(b"request")
        protocol.transport.loseWriteConnection()
        await protocol.lost
        assert protocol.received == b"request"


@pytest_twisted.ensureDeferred
async def test_mutual_tls(certs: Certs, memory: MemoryRegistry, ports: list[Any]) -> None:
    """
    A server with ca= takes clients whose certificate that CA signed; its
    application sees the client's certificate.
    """
    cert, key = certs.issue("db.t")
    _, served = await serve(ports, memory, PeerTLS.fromFiles(cert=cert, key=key, ca=certs.caPath))
    clientCert, clientKey = certs.issue("reporter")
    tls = PeerTLS.fromFiles(cert=clientCert, key=clientKey, ca=certs.caPath)
    protocol: Any = await client(memory, tls).connect(Factory.forProtocol(Seeing))
    await echoOver(protocol)
    [seen] = connectedTo(served)
    assert subject(getattr(seen, "peer", None)) == "CN=reporter"
    await hangUp(protocol)


@pytest_twisted.ensureDeferred
async def test_mutual_tls_refuses_a_client_without_certificate(
    certs: Certs, memory: MemoryRegistry, ports: list[Any]
) -> None:
    """
    The server's application never sees a client that shows no
    certificate, or one from another CA; the client is told why.
    """
    cert, key = certs.issue("db.t")
    _, served = await serve(ports, memory, PeerTLS.fromFiles(cert=cert, key=key, ca=certs.caPath))
    strangerCert, strangerKey = certs.other.issue("stranger")
    for tls, alert in [
        (PeerTLS.fromFiles(ca=certs.caPath), "alert certificate required"),
        (
            PeerTLS.fromFiles(cert=str(strangerCert), key=str(strangerKey), ca=certs.caPath),
            "alert unknown ca",
        ),
    ]:
        with capturedLogs() as events:
            # TLS 1.3: the client's side of the handshake ends before the
            # server judges its certificate; the server then drops it.
            protocol: Any = await client(memory, tls).connect(Factory.forProtocol(Seeing))
            await protocol.lost
            assert protocol.received == b""
            assert isinstance(protocol.reason, PeerTLSError)
            assert str(protocol.reason).startswith("TLS with 'db.t' failed: ")
            assert alert in str(protocol.reason)
            await eventually(
                lambda: "refused: TLS handshake with a client failed" in logged(events)
            )
        assert "certificate" in logged(events)
        assert connectedTo(served) == []


def logged(events: Sequence[dict[str, Any]]) -> str:
    return " ".join(formatEvent(event) for event in events)


# Impostors


@pytest_twisted.ensureDeferred
async def test_certificate_for_another_name_is_refused(
    certs: Certs, memory: MemoryRegistry, ports: list[Any]
) -> None:
    served = Recording(SeeingEcho)
    await impostor(ports, memory, impostorTLS(*certs.issue("cache.t")).serverFactory(served))
    message = await refusal(client(memory, PeerTLS.fromFiles(ca=certs.caPath)))
    assert "TLS peer 'db.t' refused: its certificate is for 'cache.t', not 'db.t'" in message
    assert connectedTo(served) == []


@pytest_twisted.ensureDeferred
async def test_certificate_from_another_ca_is_refused(
    certs: Certs, memory: MemoryRegistry, ports: list[Any]
) -> None:
    """
    Right name, wrong CA: the impostor gets through MasseServerEndpoint's
    own checks, but no client trusts it.
    """
    cert, key = certs.other.issue("db.t")
    _, served = await serve(ports, memory, PeerTLS.fromFiles(cert=str(cert), key=str(key)))
    message = await refusal(client(memory, PeerTLS.fromFiles(ca=certs.caPath)))
    assert (
        f"TLS peer 'db.t' refused: its certificate for 'db.t' is not signed by "
        f"ca={certs.caPath} (unable to get local issuer certificate; "
        f"issuer 'CN=impostor CA')"
    ) in message
    assert connectedTo(served) == []


@pytest_twisted.ensureDeferred
async def test_certificate_without_subject_alt_name_is_refused(
    certs: Certs, memory: MemoryRegistry, ports: list[Any]
) -> None:
    """
    Signed by the right CA, with the right common name, but no
    subjectAltName: Twisted with service-identity only logs this and goes
    on; txmasse refuses it.
    """
    served = Recording(SeeingEcho)
    tls = impostorTLS(*certs.issue("db.t", sans=[]))
    await impostor(ports, memory, tls.serverFactory(served))
    message = await refusal(client(memory, PeerTLS.fromFiles(ca=certs.caPath)))
    assert (
        "TLS peer 'db.t' refused: its certificate ('CN=db.t') has no subjectAltName; "
        "it must list the DNS name 'db.t'"
    ) in message
    assert connectedTo(served) == []


@pytest_twisted.ensureDeferred
async def test_the_check_after_the_handshake_stands_alone(
    certs: Certs, memory: MemoryRegistry, ports: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    With Twisted's own verification in place of txmasse's (which only logs
    a certificate without subjectAltName), the check made once the
    handshake is over still refuses it before the application sees it.
    """
    served = Recording(SeeingEcho)
    await impostor(ports, memory, impostorTLS(*certs.issue("db.t", sans=[])).serverFactory(served))
    trust = Certificate.loadPEM(Path(certs.caPath).read_bytes())
    monkeypatch.setattr(
        PeerTLS, "clientCreator", lambda self, expected: optionsForClientTLS(expected, trust)
    )
    message = await refusal(client(memory, PeerTLS.fromFiles(ca=certs.caPath)))
    assert "TLS peer 'db.t' refused: its certificate ('CN=db.t') has no subjectAltName" in message
    assert connectedTo(served) == []


@pytest_twisted.ensureDeferred
async def test_tls_client_refuses_plain_tcp(memory: MemoryRegistry, ports: list[Any]) -> None:
    plain = Recording(Echo)
    await impostor(ports, memory, plain, scheme="tcp")
    message = await refusal(client(memory, PeerTLS()))
    assert "tcp:host=127.0.0.1" in message
    assert "refused: not TLS, and this client requires TLS to 'db.t'" in message
    assert plain.built == []


@pytest_twisted.ensureDeferred
async def test_client_reaches_the_genuine_peer_among_impostors(
    certs: Certs, memory: MemoryRegistry, ports: list[Any]
) -> None:
    """
    Impostors registered first under the same name (wrong name, wrong CA,
    no subjectAltName, plain TCP): every connect, whatever the pick, ends
    at the genuine peer.
    """
    fooled = Recording(SeeingEcho)
    await impostor(ports, memory, impostorTLS(*certs.issue("cache.t")).serverFactory(fooled))
    cert, key = certs.other.issue("db.t")
    await impostor(ports, memory, impostorTLS(str(cert), str(key)).serverFactory(fooled))
    await impostor(ports, memory, impostorTLS(*certs.issue("db.t", [])).serverFactory(fooled))
    plain = Recording(Echo)
    await impostor(ports, memory, plain, scheme="tcp")
    _, served = await serve(ports, memory, PeerTLS.fromFiles(*certs.issue("db.t")))
    tls = PeerTLS.fromFiles(ca=certs.caPath)
    for pick in ["first", "roundrobin", "random"]:
        endpoint = client(memory, tls, pick=pick)
        for _ in range(3):
            protocol: Any = await endpoint.connect(Factory.forProtocol(Seeing))
            assert subject(protocol.peer) == "CN=db.t"
            await echoOver(protocol)
            await hangUp(protocol)
    assert connectedTo(fooled) == [] and plain.built == []
    assert len(served.built) == 9


@pytest_twisted.ensureDeferred
async def test_plain_instances_beside_tls_ones_cost_a_tls_client_nothing(
    certs: Certs, memory: MemoryRegistry, ports: list[Any]
) -> None:
    """
    During a move to TLS, plain instances share the name: a TLS client
    skips them outright, so its cache stays warm (no lookup per connect).
    """
    plain = Recording(Echo)
    await impostor(ports, memory, plain, scheme="tcp")  # registered first: tried first
    await serve(ports, memory, PeerTLS.fromFiles(*certs.issue("db.t")))
    lookups: list[str] = []
    real = memory.lookup

    def counted(namespace: str, name: str, stale: float | None = None) -> Any:
        lookups.append(name)
        return real(namespace, name, stale)

    memory.lookup = counted  # type: ignore[method-assign]
    endpoint = client(memory, PeerTLS.fromFiles(ca=certs.caPath), pick="first")
    resolver = resolverFor(memory, reactor)
    for _ in range(4):
        protocol: Any = await endpoint.connect(Factory.forProtocol(Seeing))
        await hangUp(protocol)
        await eventually(lambda: resolver.isWarm("t", "db"))
    assert lookups == ["db"] and plain.built == []


@pytest_twisted.ensureDeferred
async def test_a_pattern_verifies_each_instance_by_its_own_name(
    certs: Certs, memory: MemoryRegistry, ports: list[Any]
) -> None:
    """
    With name=db-*, each instance must show a certificate for its own name:
    db-2 showing db-1's certificate is refused, db-1 is reached.
    """
    _, served = await serve(ports, memory, PeerTLS.fromFiles(*certs.issue("db-1.t")), "db-1")
    cert, key = certs.issue("db-1.t")
    fooled = Recording(SeeingEcho)
    await impostor(ports, memory, impostorTLS(cert, key).serverFactory(fooled), name="db-2")
    endpoint = MasseClientEndpoint(
        reactor,
        "db-*",
        "t",
        registry=memory,
        pick="roundrobin",
        tls=PeerTLS.fromFiles(ca=certs.caPath),
    )
    for _ in range(4):
        protocol: Any = await endpoint.connect(Factory.forProtocol(Seeing))
        await echoOver(protocol)
        await hangUp(protocol)
    assert len(served.built) == 4 and connectedTo(fooled) == []
    await ports[0].stopListening()
    message = await refusal(endpoint)
    assert "TLS peer 'db-2.t' refused: its certificate is for 'db-1.t', not 'db-2.t'" in message


@pytest_twisted.ensureDeferred
async def test_over_redis_the_impostor_is_refused(certs: Certs, redis_server: Any) -> None:
    """
    The same, with the registry a real redis-server: a genuine peer and
    an impostor in separate registry connections, as separate processes.
    """
    url = f"{redis_server.url}?timeout=2"
    genuine, faker = registryFromURL(reactor, url), newRegistry(url)
    ports: list[Any] = []
    try:
        fooled = Recording(SeeingEcho)
        await impostor(ports, faker, impostorTLS(*certs.issue("cache.t")).serverFactory(fooled))
        _, served = await serve(ports, genuine, PeerTLS.fromFiles(*certs.issue("db.t")))
        endpoint = client(genuine, PeerTLS.fromFiles(ca=certs.caPath), pick="first", cache=False)
        assert [len(r.endpoints) for r in await genuine.lookup("t", "db")] == [1, 1]
        protocol: Any = await endpoint.connect(Factory.forProtocol(Seeing))
        await echoOver(protocol)
        await hangUp(protocol)
        assert connectedTo(fooled) == [] and len(served.built) == 1
        await ports.pop().stopListening()  # the genuine peer leaves
        message = await refusal(endpoint)
        assert "its certificate is for 'cache.t', not 'db.t'" in message
    finally:
        for port in reversed(ports):
            await port.stopListening()
        await faker.close()
        await genuine.close()


@pytest_twisted.ensureDeferred
async def test_client_without_tls_options_still_verifies(
    certs: Certs, memory: MemoryRegistry, ports: list[Any]
) -> None:
    """
    A client given no TLS options still verifies a tls: endpoint, against
    the system trust roots, which never signed a test CA's certificates.
    """
    _, served = await serve(ports, memory, PeerTLS.fromFiles(*certs.issue("db.t")))
    message = await refusal(client(memory, None))
    assert "is not signed by the system trust roots (give ca=)" in message
    assert connectedTo(served) == []


@pytest_twisted.ensureDeferred
async def test_a_silent_tls_endpoint_times_out_and_is_closed(
    memory: MemoryRegistry, ports: list[Any]
) -> None:
    """
    A tls: endpoint that never answers the handshake: the connect gives up
    at its deadline, saying where, and the half-open connection is closed.
    """
    silent = Recording(Collector)
    await impostor(ports, memory, silent)
    endpoint = client(memory, PeerTLS())
    endpoint.timeout = 0.5
    message = await refusal(endpoint)
    assert "within 0.5s" in message and "gave up connecting to tls:host=127.0.0.1" in message
    [stalled] = silent.built
    assert isinstance(stalled, Collector)
    await eventually(lambda: stalled.lost.called)


# Names


@pytest_twisted.ensureDeferred
async def test_names_compare_without_case(
    certs: Certs, memory: MemoryRegistry, ports: list[Any]
) -> None:
    """
    Peer names may hold capitals and '_': the certificate name is
    NAME.NAMESPACE in lower case, and compares without case.
    """
    assert certificateName("Cache_Primary", "Dev") == "cache_primary.dev"
    cert, key = certs.issue("Cache_Primary.DEV")
    _, served = await serve(
        ports, memory, PeerTLS.fromFiles(cert=cert, key=key), "Cache_Primary", "Dev"
    )
    endpoint = MasseClientEndpoint(
        reactor, "Cache_Primary", "Dev", registry=memory, tls=PeerTLS.fromFiles(ca=certs.caPath)
    )
    protocol: Any = await endpoint.connect(Factory.forProtocol(Seeing))
    await echoOver(protocol)
    await hangUp(protocol)
    assert len(served.built) == 1


def test_only_subject_alt_names_count(certs: Certs) -> None:
    from cryptography import x509

    def load(path: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())

    cert, _ = certs.issue("db.t", ["db.t.example", "*.t", "127.0.0.1"])
    assert checkCertificateName(load(cert), "db.t") == (
        "its certificate is for 'db.t.example', '*.t', '127.0.0.1', not 'db.t'"
    )
    assert checkCertificateName(load(cert), "db.t.example") is None
    cert, _ = certs.issue("db.t", ["web.t", "DB.T"])
    assert checkCertificateName(load(cert), "db.t") is None


@pytest.mark.parametrize(
    "description, address",
    [
        ("tls:host=10.0.0.7:port=4312", ("10.0.0.7", 4312)),
        ("tls:host=db.example:port=1", ("db.example", 1)),
        ("tls:db.example:443", ("db.example", 443)),
        (r"tls:host=\:\:1:port=65535", ("::1", 65535)),
        ("TLS:port=80:host=h", ("h", 80)),
    ],
)
def test_tls_descriptions(description: str, address: tuple[str, int]) -> None:
    assert parseTLSDescription(description) == address


@pytest.mark.parametrize(
    "description, why",
    [
        ("tls:host=h", "bad port ''"),
        ("tls:host=h:port=0", "bad port '0'"),
        ("tls:host=h:port=65536", "bad port '65536'"),
        ("tls:host=h:port=x", "bad port 'x'"),
        ("tls:host=h:port=1:trustRoots=/tmp", "unknown option 'trustRoots'"),
        ("tls:host=h:port=1:port=2", "give host= and port= once each"),
        ("tls:host=-h:port=1", "bad host '-h'"),
        ("tls:host=a b:port=1", "bad host 'a b'"),
        ("tls:host=h:port=1\\", "ends with a lone"),
        ("tcp:host=h:port=1", "not a tls: description"),
    ],
)
def test_bad_tls_descriptions(description: str, why: str) -> None:
    with pytest.raises(ValueError, match="^'.*': " + why.replace("\\", "\\\\")):
        parseTLSDescription(description)


@pytest_twisted.ensureDeferred
async def test_garbage_tls_record_is_skipped_with_its_reason(
    certs: Certs, memory: MemoryRegistry, ports: list[Any]
) -> None:
    await memory.register(PeerRecord("t", "db", ["tls:host=127.0.0.1:port=99999"]), ttl=30)
    message = await refusal(client(memory, PeerTLS.fromFiles(ca=certs.caPath)))
    assert "bad port '99999'" in message


# Bad options


def test_bad_tls_options(certs: Certs, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    text = tmp_path / "text.pem"
    text.write_text("hello\n")
    cert, key = certs.issue("db.t")
    otherCert, otherKey = certs.issue("db.t")
    encrypted = tmp_path / "encrypted.key"
    from cryptography.hazmat.primitives import serialization

    loaded = serialization.load_pem_private_key(Path(key).read_bytes(), None)
    encrypted.write_bytes(
        loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    wrongName, wrongKey = certs.issue("cache.t")
    sock = str(tmp_path / "db.sock")
    q = quote
    base = "masse:db:ns=t:registry=memory\\://"
    cases = [
        ("server", f"cert={q(str(tmp_path / 'none.pem'))}", "cert=", "cannot read it"),
        ("server", f"cert={q(str(garbage))}", f"cert={garbage}", "no PEM certificate in it"),
        ("server", f"cert={q(str(text))}", f"cert={text}", "no PEM certificate in it"),
        ("server", f"cert={q(cert)}", f"cert={cert}", "no private key in it; give key="),
        ("server", f"cert={q(cert)}:key={q(str(text))}", f"key={text}", "no PEM private key"),
        ("server", f"cert={q(cert)}:key={q(str(garbage))}", "key=", "no PEM private key"),
        ("server", f"cert={q(cert)}:key={q(otherKey)}", f"key={otherKey}", "does not match"),
        ("server", f"cert={q(cert)}:key={q(str(encrypted))}", "key=", "is encrypted"),
        ("server", f"cert={q(cert)}:key={q(key)}:ca={q(str(text))}", "ca=", "no PEM certif"),
        ("server", f"cert={q(wrongName)}:key={q(wrongKey)}", "clients of 'db'", "'cache.t'"),
        ("server", f"key={q(key)}", "key= and ca= need cert=", ""),
        ("server", f"ca={q(certs.caPath)}", "key= and ca= need cert=", ""),
        ("server", "cert=", "cert= is empty", ""),
        ("server", f"cert={q(cert)}:key={q(key)}:unix={q(sock)}", "unix= cannot", "TCP only"),
        ("server", "tls=true", "unknown option 'tls'", ""),
        ("client", f"ca={q(str(tmp_path / 'none.pem'))}", "ca=", "cannot read it"),
        ("client", f"ca={q(str(garbage))}", f"ca={garbage}", "no PEM certificate in it"),
        ("client", f"key={q(key)}", f"key={key}: give cert= too", ""),
        ("client", f"cert={q(otherCert)}:key={q(key)}", f"key={key} does not match", ""),
        ("client", "tls=maybe", "tls='maybe': must be true or false", ""),
        ("client", f"tls=false:ca={q(certs.caPath)}", "tls=false contradicts", ""),
        ("client", "tls=true:proto=tcp", "TLS clients connect only by tls", ""),
    ]
    for side, options, part, why in cases:
        parse = serverFromString if side == "server" else clientFromString
        with pytest.raises(ValueError) as caught:
            parse(reactor, f"{base}:{options}")
        message = str(caught.value)
        assert message.startswith("invalid masse: endpoint: "), (options, message)
        assert part in message and why in message, (options, message)
        assert "\n" not in message


@pytest_twisted.ensureDeferred
async def test_tls_cannot_listen_on_a_unix_socket(certs: Certs, tmp_path: Path) -> None:
    cert, key = certs.issue("db.t")
    endpoint = MasseServerEndpoint(
        reactor,
        "db",
        "t",
        registry=MemoryRegistry(reactor),
        endpoint=serverFromString(reactor, f"unix:{quote(str(tmp_path / 's'))}"),
        tls=PeerTLS.fromFiles(cert=cert, key=key),
    )
    with pytest.raises(Exception, match="for TLS: TLS peers listen on TCP"):
        await endpoint.listen(Recording(Echo))
    assert not (tmp_path / "s").exists()
