"""
A password-protected Redis over a UNIX socket: C{redis+unix://} takes the
user and password in its userinfo, and never shows the password.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import pytest_twisted
from twisted.logger import LogEvent, formatEvent

from tests.helpers import (
    ADMIN_PASSWORD,
    PASSWORD,
    Events,
    RedisServer,
    aclServer,
    eventually,
    lookupFailure,
    newRegistry,
    record,
)
from txmasse.registry.url import parseRegistryURL


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = aclServer(tmp_path)
    yield server
    server.stop()


def unixURL(server: RedisServer, userinfo: str) -> str:
    return f"redis+unix://{userinfo}@{server.socketPath}?db=1&timeout=2"


@pytest_twisted.ensureDeferred
async def test_acl_user_over_a_unix_socket(
    acl_server: RedisServer, logged: Sequence[LogEvent]
) -> None:
    url = unixURL(acl_server, f"masse:{PASSWORD}")
    peer, watcher = newRegistry(url), newRegistry(url)
    try:
        events = Events()
        await watcher.watch("dev", "*", events)
        lease = await peer.register(record("db"), 30)
        await eventually(lambda: events.kinds() == [("joined", "db")])
        assert await watcher.lookup("dev", "db") == [lease.record]
        # Over the socket, as the ACL user, in database 1.
        clients = [c for c in acl_server.command("CLIENT", "LIST").decode().splitlines()]
        ours = [c for c in clients if " user=masse " in f" {c} "]
        assert ours and all(" db=1 " in f" {c} " and "laddr=/" in c for c in ours), clients
        await lease.release()
        await eventually(lambda: events.kinds() == [("joined", "db"), ("left", "db")])
    finally:
        await peer.close()
        await watcher.close()
    assert acl_server.command("ACL", "LOG") == [], "a command was denied"
    assert peer.url == f"redis+unix://masse:***@{acl_server.socketPath}?db=1&timeout=2"
    assert all(PASSWORD not in formatEvent(e) and PASSWORD not in repr(e) for e in logged)


@pytest_twisted.ensureDeferred
async def test_requirepass_alone_over_a_unix_socket(acl_server: RedisServer) -> None:
    """
    Userinfo without a colon is the password alone (C{requirepass}, the
    default user); with a leading colon too.
    """
    for userinfo in (ADMIN_PASSWORD, f":{ADMIN_PASSWORD}"):
        registry = newRegistry(unixURL(acl_server, userinfo))
        try:
            lease = await registry.register(record("db"), 30)
            assert await registry.lookup("dev", "db") == [lease.record]
            await lease.release()
        finally:
            await registry.close()


@pytest_twisted.ensureDeferred
async def test_wrong_password_over_a_unix_socket_is_named_without_it(
    acl_server: RedisServer, logged: Sequence[LogEvent]
) -> None:
    wrong = "not-" + PASSWORD
    message = await lookupFailure(
        f"redis+unix://masse:{wrong}@{acl_server.socketPath}?timeout=0.5"
    )
    assert message.startswith(f"registry redis+unix://masse:***@{acl_server.socketPath}")
    assert "WRONGPASS" in message
    assert wrong not in message and PASSWORD not in message
    for event in logged:
        assert wrong not in formatEvent(event) and wrong not in repr(event)


@pytest_twisted.ensureDeferred
async def test_no_password_over_a_unix_socket_is_noauth(acl_server: RedisServer) -> None:
    message = await lookupFailure(f"redis+unix://{acl_server.socketPath}?timeout=0.5")
    assert message.startswith(f"registry redis+unix://{acl_server.socketPath}")
    assert "NOAUTH" in message or "Authentication required" in message, message


@pytest.mark.parametrize(
    "url, fields",
    [
        (
            "redis+unix://masse:p%40ss@/run/redis.sock?db=1",
            {
                "username": "masse",
                "password": "p@ss",
                "path": "/run/redis.sock",
                "db": 1,
                "display": "redis+unix://masse:***@/run/redis.sock?db=1",
            },
        ),
        (
            "redis+unix://:secret@/run/redis.sock",
            {"username": None, "password": "secret", "display": "redis+unix://:***@/run/redis.sock"},
        ),
        (
            "redis+unix://secret@/run/redis.sock",
            {"username": None, "password": "secret", "display": "redis+unix://***@/run/redis.sock"},
        ),
        ("redis+unix:///run/redis.sock", {"username": None, "password": None}),
    ],
)
def test_unix_userinfo_parses(url: str, fields: dict[str, object]) -> None:
    parsed = parseRegistryURL(url)
    for name, value in fields.items():
        assert getattr(parsed, name) == value
    assert "secret" not in repr(parsed) and "p@ss" not in repr(parsed)


@pytest.mark.parametrize(
    "url, expected",
    [
        ("redis+unix://host/run/redis.sock", "host 'host' is not allowed"),
        ("redis+unix://u:secret@host/run/redis.sock", "host 'host' is not allowed"),
        ("redis+unix://u:secret@", "the socket path is missing"),
        ("redis+unix://u:@/run/redis.sock", "the password is empty"),
    ],
)
def test_bad_unix_urls_name_the_part(url: str, expected: str) -> None:
    with pytest.raises(ValueError) as caught:
        parseRegistryURL(url)
    assert expected in str(caught.value)
    assert "secret" not in str(caught.value)
