"""
Registry access: a Redis ACL user with the least privileges txmasse needs,
wrong credentials, TLS with client certificates, and passwords that never
show (not in logs, errors, reprs, nor the masse command's output).
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.logger import LogEvent, formatEvent

from tests.certs import Authority
from tests.helpers import (
    MASSE_ACL,
    PASSWORD,
    Events,
    RedisServer,
    _encode,
    _read,
    aclServer,
    eventually,
    freePort,
    lookupFailure,
    masse,
    masseURL,
    newRegistry,
    record,
    startMasse,
)
from txmasse import EventKind, PeerEvent
from txmasse.registry.signed import SignedRegistry
from txmasse.registry.url import parseRegistryURL


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = aclServer(tmp_path)
    yield server
    server.stop()


def assertHidden(texts: list[str]) -> None:
    for text in texts:
        assert PASSWORD not in text, text


def logText(events: Sequence[LogEvent]) -> list[str]:
    texts = []
    for event in events:
        texts.append(formatEvent(event))
        texts.append(repr(event))
        failure = event.get("log_failure")
        if failure is not None:
            texts.append(failure.getTraceback())
    return texts


# A restricted ACL user


@pytest_twisted.ensureDeferred
async def test_least_privileged_acl_user_can_do_everything(
    acl_server: RedisServer, logged: Sequence[LogEvent]
) -> None:
    url = masseURL(acl_server) + "?timeout=2"
    peer, watcher = newRegistry(url), newRegistry(url)
    try:
        events = Events()
        subscription = await watcher.watch("dev", "*", events, usage=True)
        lease = await peer.register(record("db"), 30)
        short = await peer.register(record("web"), 0.3)
        await eventually(lambda: events.kinds() == [("joined", "db"), ("joined", "web")])
        assert await watcher.lookup("dev", "db") == [lease.record]
        assert sorted(r.name for r in await watcher.find("dev", "*")) == ["db", "web"]
        assert len(await watcher.leases("dev", "d*")) == 1
        await peer.report(PeerEvent(EventKind.CONNECTED, lease.record, "client:1"))
        await lease.update(attrs.evolve(lease.record, metadata={"v": "2"}))
        short.stop()  # times out: the sweep runs under the same ACL
        await eventually(lambda: ("timedout", "web") in events.kinds(), timeout=3)
        await lease.release()
        await eventually(lambda: ("left", "db") in events.kinds())
        assert [e.kind for e in events if e.record.name == "db"] == [
            "joined",
            "connected",
            "updated",
            "left",
        ]
        assert subscription.synced

        # Reconnects (re-AUTH, script reload, resubscribe) work too.
        seen = len(events)
        acl_server.command("CLIENT", "KILL", "USER", "masse")
        again = await peer.register(record("db"), 30)
        await eventually(
            lambda: any(e.kind == "joined" and e.record == again.record for e in events[seen:])
        )
        acl_server.command("SCRIPT", "FLUSH")  # lost scripts are sent again (EVAL)
        assert await watcher.lookup("dev", "db") == [again.record]
    finally:
        await peer.close()
        await watcher.close()
    assert acl_server.command("ACL", "LOG") == [], "a command was denied"
    keys = acl_server.command("KEYS", "*")
    assert keys and all(key.startswith(b"masse:{dev}:") for key in keys)
    assertHidden(logText(logged))


def test_the_acl_confines_the_user(acl_server: RedisServer) -> None:
    """
    What the ACL line refuses: other keys, other channels, admin commands.
    """

    def asMasse(*args: object) -> Any:
        with socket.create_connection(("127.0.0.1", acl_server.port), timeout=5) as s:
            with s.makefile("rb") as f:
                s.sendall(_encode("AUTH", "masse", PASSWORD))
                assert _read(f) == "OK"
                s.sendall(_encode(*args))
                try:
                    return _read(f)
                except RuntimeError as e:
                    return str(e)

    assert asMasse("HSET", "masse:{dev}:n:db", "i", "x") == 1
    for args in [
        ("GET", "other"),
        ("HGETALL", "session:1"),
        ("PUBLISH", "other-channel", "x"),
        ("EVAL", "return redis.call('GET', 'other')", 0),
        ("KEYS", "*"),
        ("FLUSHALL",),
        ("CONFIG", "GET", "*"),
        ("ACL", "LIST"),
    ]:
        assert str(asMasse(*args)).startswith(("NOPERM", "ERR")), args


@pytest.mark.parametrize(
    "user, password, expected",
    [
        ("masse", "wrong-pw-123", "WRONGPASS"),
        ("nobody", PASSWORD, "WRONGPASS"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_wrong_user_or_password_is_a_clear_error(
    acl_server: RedisServer, logged: Sequence[LogEvent], user: str, password: str, expected: str
) -> None:
    message = await lookupFailure(masseURL(acl_server, password, user) + "?timeout=0.5")
    assert message.startswith(f"registry redis://{user}:***@127.0.0.1:{acl_server.port}/0")
    assert "could not auth" in message and expected in message
    assert password not in message and PASSWORD not in message
    assertHidden(logText(logged))
    assert all(password not in text for text in logText(logged))


@pytest_twisted.ensureDeferred
async def test_connection_retries_name_the_registry_without_its_password(
    logged: Sequence[LogEvent],
) -> None:
    port = freePort()
    message = await lookupFailure(f"redis://masse:{PASSWORD}@127.0.0.1:{port}/0?timeout=1")
    assert "Connection refused" in message
    retries = [text for text in map(formatEvent, logged) if "unreachable" in text]
    assert retries, [formatEvent(e) for e in logged]
    shown = f"registry redis://masse:***@127.0.0.1:{port}/0?timeout=1 unreachable"
    assert all(shown in text for text in retries), retries
    assertHidden(logText(logged))


@pytest_twisted.ensureDeferred
async def test_missing_permissions_are_named(tmp_path: Path, logged: Sequence[LogEvent]) -> None:
    server = aclServer(tmp_path, MASSE_ACL.replace("+evalsha ", ""))
    try:
        message = await lookupFailure(masseURL(server) + "?timeout=0.5")
    finally:
        server.stop()
    assert "NOPERM" in message and "evalsha" in message, message
    assertHidden([message, *logText(logged)])


def test_password_hidden_in_reprs_and_endpoint_errors() -> None:
    url = f"redis://masse:{PASSWORD}@127.0.0.1:1/0?timeout=0.5"
    parsed = parseRegistryURL(url)
    registry = newRegistry(url)
    escaped = url.replace(":", "\\:")
    client = clientFromString(reactor, f"masse:db:registry={escaped}")
    server = serverFromString(reactor, f"masse:db:registry={escaped}")
    try:
        assertHidden([repr(parsed), str(parsed), parsed.display, repr(registry), registry.url])
        assertHidden([repr(client), str(client), repr(server), str(server)])
        for bad in (url.replace("/0?", "/x?"), url.replace("redis:", "http:")):
            with pytest.raises(ValueError) as caught:
                clientFromString(reactor, "masse:db:registry=" + bad.replace(":", "\\:"))
            assertHidden([str(caught.value)])
    finally:
        registry.close()


def test_password_hidden_when_a_registry_option_is_half_escaped() -> None:
    half = f"masse:db:registry=redis\\://masse:{PASSWORD}@127.0.0.1\\:6379/0"
    with pytest.raises(ValueError) as caught:
        clientFromString(reactor, half)
    assertHidden([str(caught.value)])


@pytest.mark.parametrize("parse", [clientFromString, serverFromString])
@pytest.mark.parametrize(
    "description",
    [
        "masse:db:registry=redis\\://masse:{password}@127.0.0.1\\:6379/0",
        "masse:name=db:registry=redis\\://masse:{password}@127.0.0.1\\:6379/0",
        "masse:registry=redis\\://masse:{password}@127.0.0.1\\:6379/0",
        "masse:db:registry=redis\\://masse:{password}@127.0.0.1:6379/0",
        "masse:db:registry=redis\\://masse:x={password}@127.0.0.1\\:6379/0",
        "masse:db:registry=redis\\://masse:x:{password}@127.0.0.1\\:6379/0",
        "masse:db:registry=redis+sentinel\\://h\\:1/m?sentinel_password=x:{password}",
    ],
)
def test_half_escaped_registry_says_so_without_the_password(parse: Any, description: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse(reactor, description.format(password=PASSWORD))
    message = str(caught.value)
    assertHidden([message])
    assert "registry= was cut at an unescaped ':'" in message, message
    assert "escape each ':' inside registry= as '\\:'" in message, message


@pytest.mark.parametrize(
    "description",
    [
        "masse:db:listen=tcp\\:0\\:interface=redis\\://u\\:{password}@h",
        "masse:db:meta.x=a:redis\\://u\\:{password}@h",
    ],
)
def test_password_hidden_in_any_quoted_url(description: str) -> None:
    with pytest.raises(ValueError) as caught:
        serverFromString(reactor, description.format(password=PASSWORD))
    assertHidden([str(caught.value)])


def test_masse_command_never_shows_the_password(acl_server: RedisServer) -> None:
    url = masseURL(acl_server)
    registered = startMasse(
        "register", "web", "--endpoint", "tcp:host=127.0.0.1:port=8080", registry=url
    )
    watcher = startMasse("watch", "--json", registry=url)
    try:
        assert registered.stdout is not None
        first = registered.stdout.readline()
        assert first.startswith("registered dev/web") and "masse:***@" in first, first
        listed = masse("ls", "--all", registry=url)
        assert listed.returncode == 0 and "web" in listed.stdout, listed.stderr
        wrong = masse("ls", registry=masseURL(acl_server, "not-" + PASSWORD) + "?timeout=0.5")
        assert wrong.returncode == 1 and "WRONGPASS" in wrong.stderr, wrong.stderr
        unknown = masse("resolve", "nobody", registry=url)
        assert "masse:***@" in unknown.stderr
        registered.send_signal(signal.SIGTERM)
        registered.wait(10)
        rest, errors = registered.communicate(timeout=10)
    finally:
        registered.kill()
        watcher.send_signal(signal.SIGTERM)
        watched, watchErrors = watcher.communicate(timeout=10)
    kinds = [json.loads(line)["kind"] for line in watched.splitlines()]
    assert kinds[-1:] == ["left"], watched
    assertHidden(
        [
            listed.stdout,
            listed.stderr,
            wrong.stdout,
            wrong.stderr,
            unknown.stderr,
            first,
            rest,
            errors,
            watched,
            watchErrors,
        ]
    )


# TLS with client certificates


class MutualTLSRedis(RedisServer):
    """
    A Redis over TLS that requires a client certificate from the test CA.
    """

    def __init__(self, directory: Path, authority: Authority):
        self.authority = authority
        self.clientCert, self.clientKey = authority.issue("masse-client")
        cert, key = authority.issue("127.0.0.1")
        super().__init__(directory, tls=(cert, key, authority.caPath))

    def _portArgs(self) -> tuple[str, ...]:
        args = list(super()._portArgs())
        args[args.index("--tls-auth-clients") + 1] = "yes"
        return tuple(args)

    def command(self, *args: object) -> Any:
        context = ssl.create_default_context(cafile=str(self.authority.caPath))
        context.load_cert_chain(str(self.clientCert), str(self.clientKey))
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as plain:
            with context.wrap_socket(plain, server_hostname="127.0.0.1") as s:
                with s.makefile("rb") as f:
                    s.sendall(_encode(*args))
                    return _read(f)


@pytest.fixture
def mutual_tls(tmp_path: Path) -> Iterator[MutualTLSRedis]:
    server = MutualTLSRedis(tmp_path, Authority.create(tmp_path))
    server.start()
    yield server
    server.stop()


def tlsURL(server: MutualTLSRedis, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"ca": server.authority.caPath, **options}.items())
    return f"rediss://127.0.0.1:{server.port}/0?{query}"


@pytest_twisted.ensureDeferred
async def test_tls_with_a_client_certificate(mutual_tls: MutualTLSRedis) -> None:
    url = tlsURL(mutual_tls, cert=mutual_tls.clientCert, key=mutual_tls.clientKey)
    peer, watcher = newRegistry(url), newRegistry(url)
    try:
        events = Events()
        await watcher.watch("dev", "*", events)
        lease = await peer.register(record("db"), 5)
        await eventually(lambda: events.kinds() == [("joined", "db")])
        assert await watcher.lookup("dev", "db") == [lease.record]
    finally:
        await peer.close()
        await watcher.close()


@pytest.mark.parametrize(
    "certificate, why",
    [("none", "certificate required"), ("another CA", "unknown ca")],
)
@pytest_twisted.ensureDeferred
async def test_tls_without_an_accepted_client_certificate_fails_clearly(
    mutual_tls: MutualTLSRedis, tmp_path: Path, certificate: str, why: str
) -> None:
    options: dict[str, object] = {"timeout": 0.5}
    if certificate == "another CA":
        stranger = Authority.create(tmp_path / "..", name="stranger client CA")
        cert, key = stranger.issue("masse-client")
        options.update(cert=cert, key=key)
    message = await lookupFailure(tlsURL(mutual_tls, **options))
    assert message.startswith(f"registry rediss://127.0.0.1:{mutual_tls.port}/0")
    assert message.endswith(f"alert {why}')]"), message


# Everything at once: the setup docs/security.md describes


@pytest_twisted.ensureDeferred
async def test_acl_user_over_mutual_tls_with_signed_records(tmp_path: Path) -> None:
    authority = Authority.create(tmp_path)
    server = MutualTLSRedis(tmp_path, authority)
    server.extraArgs = ("--user", "masse", "on", f">{PASSWORD}", *MASSE_ACL.split())
    server.start()
    secrets = tmp_path / "masse.secrets"
    secrets.write_text("dev 9f1c3e5a7b2d4f6e8a0c1e3b5d7f9a2c\n")
    url = (
        f"rediss://masse:{PASSWORD}@127.0.0.1:{server.port}/0?ca={authority.caPath}"
        f"&cert={server.clientCert}&key={server.clientKey}&secrets={secrets}"
    )
    registry, forger = newRegistry(url), newRegistry(url)
    try:
        assert isinstance(registry, SignedRegistry) and isinstance(forger, SignedRegistry)
        lease = await registry.register(record("db"), 5)
        await forger.registry.register(record("db", port=6666), 5)
        assert await registry.lookup("dev", "db") == [lease.record]
        assert registry.rejected == {"dev": 1}
        assert PASSWORD not in registry.url and PASSWORD not in repr(registry)
    finally:
        await registry.close()
        await forger.close()
        server.stop()


@pytest.mark.parametrize(
    "url",
    [
        "redis://masse:Pw-s3cret/a1b2c3@127.0.0.1:6379/0",  # '/' unencoded
        "redis://masse:Pw-s3cret?a1b2c3@127.0.0.1:6379/0",  # '?' unencoded
        "redis://masse:Pw-s3cret#a1b2c3@127.0.0.1:6379/0",  # '#' unencoded
        "redis://masse:Pw-s3cret-a1b2c3@127.0.0.1:port/0",  # a bad port beside it
        "redis+sentinel://h:26379/m?sentinel%5Fpassword=Pw-s3cret-a1b2c3",
        "redis+sentinel://h:26379/m?sentinel_p%61ssword=Pw-s3cret-a1b2c3",
    ],
)
def test_password_hidden_when_the_url_is_malformed(url: str) -> None:
    """
    A password that breaks the URL's syntax, or an option name written
    percent-encoded, is an error that shows neither the password nor a
    piece of it.
    """
    with pytest.raises(ValueError) as caught:
        parseRegistryURL(url)
    message = str(caught.value)
    for piece in ("Pw-s3cret", "a1b2c3"):
        assert piece not in message, message
