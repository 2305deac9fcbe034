"""
The Redis registry over a UNIX socket and over verified TLS.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted

from tests.certs import Authority
from tests.helpers import RedisServer, lookupFailure, newRegistry, record
from txmasse import RegistryUnavailable


@pytest_twisted.ensureDeferred
async def test_unix_socket(redis_server: RedisServer) -> None:
    registry = newRegistry(f"redis+unix://{redis_server.socketPath}?db=3")
    try:
        lease = await registry.register(record(), 5)
        assert await registry.lookup("dev", "db") == [lease.record]
    finally:
        await registry.close()
    assert redis_server.command("SELECT", 3) == "OK"


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[RedisServer, Authority]]:
    authority = Authority.create(tmp_path)
    cert, key = authority.issue("127.0.0.1")
    server = RedisServer(tmp_path, tls=(cert, key, authority.caPath))
    server.start()
    yield server, authority
    server.stop()


@pytest_twisted.ensureDeferred
async def test_tls_verified_against_the_given_ca(
    tls_server: tuple[RedisServer, Authority],
) -> None:
    server, authority = tls_server
    registry = newRegistry(f"rediss://127.0.0.1:{server.port}/0?ca={authority.caPath}")
    try:
        lease = await registry.register(record(), 5)
        assert await registry.lookup("dev", "db") == [lease.record]
    finally:
        await registry.close()


@pytest_twisted.ensureDeferred
async def test_tls_refuses_a_server_from_another_ca(
    tls_server: tuple[RedisServer, Authority], tmp_path: Path
) -> None:
    server, _ = tls_server
    stranger = Authority.create(tmp_path / "..", name="stranger CA")
    url = f"rediss://127.0.0.1:{server.port}/0?ca={stranger.caPath}&timeout=1"
    assert "certificate verify failed" in await lookupFailure(url)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
@pytest_twisted.ensureDeferred
async def test_tls_refuses_a_certificate_for_another_host(tmp_path: Path, host: str) -> None:
    """
    A certificate from the trusted CA, but for another name: the error
    names the host asked for and says the names do not match.
    """
    authority = Authority.create(tmp_path)
    cert, key = authority.issue("redis.example.com")
    server = RedisServer(tmp_path, tls=(cert, key, authority.caPath))
    server.start()
    try:
        message = await lookupFailure(
            f"rediss://{host}:{server.port}/0?ca={authority.caPath}&timeout=1"
        )
    finally:
        server.stop()
    assert f"certificate verify failed for {host!r}" in message, message
    assert "Mismatch" in message and "\n" not in message, message


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
@pytest_twisted.ensureDeferred
async def test_tls_refuses_a_certificate_without_subject_alt_name(
    tmp_path: Path, host: str
) -> None:
    """
    service-identity only logs this case and lets the connection through.
    """
    authority = Authority.create(tmp_path)
    cert, key = authority.issue(host, sans=[])
    server = RedisServer(tmp_path, tls=(cert, key, authority.caPath))
    server.start()
    registry = newRegistry(f"rediss://{host}:{server.port}/0?ca={authority.caPath}&timeout=1")
    try:
        with pytest.raises(RegistryUnavailable) as caught:
            await registry.lookup("dev", "db")
        assert "subjectAltName" in str(caught.value)
        assert server.commandCalls().get("evalsha", 0) == 0
    finally:
        await registry.close()
        server.stop()


def test_unreadable_ca_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ca=.*: cannot read it"):
        newRegistry(f"rediss://127.0.0.1:1/0?ca={tmp_path}/missing.pem")


def test_missing_redis_server_fails_with_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y redis-server"):
        RedisServer(tmp_path)
