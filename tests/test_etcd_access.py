"""
Reaching a guarded etcd: verified TLS (C{etcds://}) and a user and
password (etcd's auth tokens, renewed when they expire).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted

from tests.certs import Authority
from tests.etcd_helpers import EtcdCluster, gateway
from tests.helpers import lookupFailure, newRegistry, sleep
from txmasse import PeerRecord


def record(name: str = "db") -> PeerRecord:
    return PeerRecord("dev", name, ["tcp:host=127.0.0.1:port=4000"])


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority.create(tmp_path_factory.mktemp("etcd-ca"))


@pytest.fixture(scope="module")
def tls_etcd(
    tmp_path_factory: pytest.TempPathFactory, authority: Authority
) -> Iterator[EtcdCluster]:
    cert, key = authority.issue("127.0.0.1")
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-tls"), tls=(cert, key, authority.caPath))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def mtls_etcd(
    tmp_path_factory: pytest.TempPathFactory, authority: Authority
) -> Iterator[tuple[EtcdCluster, tuple[Path, Path]]]:
    """
    A member that requires a client certificate signed by the CA.
    """
    cert, key = authority.issue("127.0.0.1")
    client = authority.issue("masse-peer")
    cluster = EtcdCluster(
        tmp_path_factory.mktemp("etcd-mtls"),
        tls=(cert, key, authority.caPath),
        extraArgs=("--client-cert-auth", "--trusted-ca-file", str(authority.caPath)),
        clientCert=client,
    )
    cluster.start()
    yield cluster, client
    cluster.stop()


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """
    A member with auth on, whose tokens live one second.
    """
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-auth"), extraArgs=("--auth-token-ttl", "1"))
    cluster.start()
    port = cluster.members[0].clientPort
    gateway(port, "/v3/auth/role/add", {"name": "root"})
    gateway(port, "/v3/auth/user/add", {"name": "root", "password": "rootpw"})
    gateway(port, "/v3/auth/user/grant", {"user": "root", "role": "root"})
    gateway(port, "/v3/auth/enable", {})
    yield cluster
    cluster.stop()


@pytest_twisted.ensureDeferred
async def test_etcds_verified_with_the_ca(tls_etcd: EtcdCluster, authority: Authority) -> None:
    registry = newRegistry(f"{tls_etcd.url}/tls?ca={authority.caPath}")
    try:
        lease = await registry.register(record(), 5)
        assert await registry.lookup("dev", "db") == [lease.record]
        seen: list[object] = []
        await registry.watch("dev", "*", seen.append)
        assert len(seen) == 0
    finally:
        await registry.close()


@pytest_twisted.ensureDeferred
async def test_etcds_refuses_a_certificate_of_another_ca(
    tls_etcd: EtcdCluster, tmp_path: Path
) -> None:
    other = Authority.create(tmp_path, "another CA")
    message = await lookupFailure(f"{tls_etcd.url}/tls?ca={other.caPath}&timeout=1")
    assert f"registry {tls_etcd.url}/tls?ca={other.caPath}&timeout=1: lookup of 'db'" in message
    assert "certificate verify failed" in message


@pytest_twisted.ensureDeferred
async def test_etcds_refuses_a_certificate_for_another_host(
    tmp_path: Path, authority: Authority
) -> None:
    cert, key = authority.issue("elsewhere.example")
    cluster = EtcdCluster(tmp_path, tls=(cert, key, authority.caPath))
    cluster.members[0].start()
    try:
        message = await lookupFailure(f"{cluster.url}/tls?ca={authority.caPath}&timeout=1")
        assert "certificate verify failed for '127.0.0.1'" in message
    finally:
        cluster.stop()


@pytest_twisted.ensureDeferred
async def test_etcds_with_a_client_certificate(
    mtls_etcd: tuple[EtcdCluster, tuple[Path, Path]], authority: Authority
) -> None:
    cluster, (cert, key) = mtls_etcd
    base = f"{cluster.url}/mtls?ca={authority.caPath}&timeout=1"
    registry = newRegistry(f"{base}&cert={cert}&key={key}")
    try:
        lease = await registry.register(record(), 5)
        assert await registry.lookup("dev", "db") == [lease.record]
    finally:
        await registry.close()
    message = await lookupFailure(base)  # no certificate to show
    assert f"registry {base}: lookup of 'db' failed" in message
    assert "bad certificate" in message  # etcd's TLS alert, passed on


def test_etcds_bad_ca_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ValueError, match=re.escape(f"ca={bad}: no PEM certificate in it")):
        newRegistry(f"etcds://127.0.0.1:1?ca={bad}")
    with pytest.raises(ValueError, match=re.escape("ca=/nonexistent.pem: cannot read it")):
        newRegistry("etcds://127.0.0.1:1?ca=/nonexistent.pem")


@pytest_twisted.ensureDeferred
async def test_user_and_password(auth_etcd: EtcdCluster) -> None:
    address = auth_etcd.members[0].address
    registry = newRegistry(f"etcd://root:rootpw@{address}/auth")
    watching = newRegistry(f"etcd://{address}/auth?user=root&password=rootpw")
    try:
        seen: list[object] = []
        await watching.watch("dev", "*", seen.append)
        lease = await registry.register(record(), 5)
        assert await registry.lookup("dev", "db") == [lease.record]
        await sleep(1.5)  # the tokens expired: new ones are fetched
        assert await registry.lookup("dev", "db") == [lease.record]
        await registry.register(record("web"), 5)
        assert len(await watching.find("dev", "*")) == 2
    finally:
        await registry.close()
        await watching.close()


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_named_without_the_password(auth_etcd: EtcdCluster) -> None:
    address = auth_etcd.members[0].address
    message = await lookupFailure(f"etcd://root:hunter2@{address}/auth")
    assert f"registry etcd://root:***@{address}/auth: lookup of 'db' failed" in message
    assert "authentication failed" in message and "hunter2" not in message
    message = await lookupFailure(f"etcd://{address}/auth")
    assert "user name is empty" in message or "permission denied" in message
