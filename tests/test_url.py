"""
Registry URLs: what parses, what is refused (naming the bad part), and
that passwords never show.
"""

from __future__ import annotations

import pytest
from twisted.internet import reactor
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint

from txmasse._tcp import tcpEndpoint
from txmasse.registry import registryFromURL
from txmasse.registry.redis import endpointFor
from txmasse.registry.url import defaultNamespace, defaultRegistryURL, parseRegistryURL


@pytest.mark.parametrize(
    "url, fields",
    [
        ("redis://127.0.0.1:6379/0", {"host": "127.0.0.1", "port": 6379, "db": 0}),
        ("redis://db.example", {"host": "db.example", "port": 6379, "db": None}),
        ("redis://[::1]:7000/3", {"host": "::1", "port": 7000, "db": 3}),
        (
            "redis://alice:p%40ss@h/1",
            {"username": "alice", "password": "p@ss", "display": "redis://alice:***@h/1"},
        ),
        ("redis://:secret@h", {"username": None, "password": "secret"}),
        ("redis://h?timeout=0.25", {"timeout": 0.25}),
        ("rediss://h?ca=/tmp/ca.pem", {"scheme": "rediss", "ca": "/tmp/ca.pem"}),
        ("redis+unix:///run/redis.sock?db=2", {"path": "/run/redis.sock", "db": 2}),
        (
            "redis+sentinel://s1:26380,[::1],s3/mymaster/2?timeout=0.5",
            {
                "sentinels": (("s1", 26380), ("::1", 26379), ("s3", 26379)),
                "master": "mymaster",
                "db": 2,
                "timeout": 0.5,
            },
        ),
        (
            "redis+sentinel://u:secret@s1:26379/m",
            {"username": "u", "password": "secret", "master": "m", "db": None},
        ),
        (
            "rediss+sentinel://s1/m?ca=/ca.pem&sentinel_username=sam&sentinel_password=secret",
            {
                "scheme": "rediss+sentinel",
                "ca": "/ca.pem",
                "sentinelUsername": "sam",
                "sentinelPassword": "secret",
                "display": "rediss+sentinel://s1/m?ca=/ca.pem&sentinel_username=sam"
                "&sentinel_password=***",
            },
        ),
        ("memory://", {"scheme": "memory"}),
        ("sqlite:///var/lib/masse.db", {"scheme": "sqlite", "path": "/var/lib/masse.db"}),
        ("sqlite:run/masse.db", {"path": "run/masse.db", "poll": None}),
        (
            "sqlite:///a%20b.db?timeout=0.5&poll=0.25",
            {"path": "/a b.db", "timeout": 0.5, "poll": 0.25},
        ),
    ],
)
def test_good_urls(url: str, fields: dict[str, object]) -> None:
    parsed = parseRegistryURL(url)
    for name, value in fields.items():
        assert getattr(parsed, name) == value
    assert "secret" not in repr(parsed) and "p@ss" not in repr(parsed)


@pytest.mark.parametrize(
    "url, part",
    [
        ("", "non-empty"),
        ("http://h", "scheme 'http'"),
        ("h:6379", "scheme 'h'"),
        ("redis://", "the host"),
        ("redis://h:99999", "the address"),
        ("redis://h:port", "the address"),
        ("redis://h/x", "database 'x'"),
        ("redis://h?timeout=-1", "timeout '-1'"),
        ("redis://h?timeout=nan", "timeout 'nan'"),
        ("redis://h?timeout=\u0663", "timeout '\u0663'"),
        ("redis://h/\u0663", "database '\u0663'"),
        ("etcd://h:\u0663", "port '\u0663' must be a number"),
        ("redis://h?tls=1", "option 'tls'"),
        ("redis+unix://", "socket path"),
        ("memory://x", "memory://"),
        ("redis+sentinel:///m", "sentinel address ''"),
        ("redis+sentinel://s1,,s2/m", "sentinel address ''"),
        ("redis+sentinel://s1:x/m", "sentinel port 'x'"),
        ("redis+sentinel://s1:0/m", "sentinel port '0'"),
        ("redis+sentinel://[::1/m", "the address"),
        ("redis+sentinel://[::1]x/m", "sentinel address '[::1]x'"),
        ("redis+sentinel://s1", "the master name"),
        ("redis+sentinel://s1/", "the master name"),
        ("redis+sentinel://s1/a%20b", "master name 'a b'"),
        ("redis+sentinel://s1/m/x", "database 'x'"),
        ("redis+sentinel://s1/m?ca=/x", "option 'ca'"),
        ("redis+sentinel://u:secret@s1:x/m", "sentinel port"),
        ("rediss://h?cert=/a", "cert and key"),
        ("rediss+sentinel://s1/m?key=/a", "cert and key"),
        ("redis://h?sentinel_password=secret", "option 'sentinel_password'"),
        ("redis://h\n", "printable"),
        ("sqlite://relative/masse.db", "a host"),
        ("sqlite://u:secret@h/x.db", "a host"),
        ("sqlite:", "the database path"),
        ("sqlite:///", "the database path"),
        ("sqlite:///tmp/", "the database path"),
        ("sqlite::memory:", "memory://"),
        ("sqlite:///x.db?poll=0", "poll '0'"),
        ("sqlite:///x.db?poll=soon", "poll 'soon'"),
        ("sqlite:///x.db?timeout=0", "timeout '0'"),
        ("sqlite:///x.db?db=1", "option 'db'"),
    ],
)
def test_bad_urls_name_the_part(url: str, part: str) -> None:
    with pytest.raises(ValueError) as caught:
        parseRegistryURL(url)
    assert part in str(caught.value)


def test_password_hidden_in_errors() -> None:
    with pytest.raises(ValueError) as caught:
        parseRegistryURL("redis://bob:hunter2@h/notadb")
    assert "hunter2" not in str(caught.value)
    assert "bob:***@h" in str(caught.value)
    with pytest.raises(ValueError) as caught:
        parseRegistryURL("redis+sentinel://s1/m?sentinel_password=hunter2&x=1")
    assert "hunter2" not in str(caught.value)


def test_defaults_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MASSE_REGISTRY")
    assert defaultRegistryURL() == "redis://127.0.0.1:6379/0"
    assert defaultNamespace() == "default"
    monkeypatch.setenv("MASSE_REGISTRY", "memory://")
    monkeypatch.setenv("MASSE_NAMESPACE", "prod")
    assert defaultRegistryURL() == "memory://"
    assert defaultNamespace() == "prod"
    monkeypatch.setenv("MASSE_NAMESPACE", "no way")
    with pytest.raises(ValueError, match=r"\$MASSE_NAMESPACE: invalid namespace 'no way'"):
        defaultNamespace()


def test_one_registry_per_url_until_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASSE_REGISTRY", "memory://")
    first = registryFromURL(reactor)
    assert registryFromURL(reactor, "memory://") is first
    first.close()
    assert registryFromURL(reactor) is not first


@pytest.mark.parametrize(
    "host, kind",
    [
        ("127.0.0.1", TCP4ClientEndpoint),
        ("::1", TCP6ClientEndpoint),
        ("localhost", HostnameEndpoint),
        ("db.example", HostnameEndpoint),
    ],
)
def test_ip_addresses_are_connected_to_directly(host: str, kind: type) -> None:
    """
    HostnameEndpoint reports a refused connection only 0.3 s later, when
    its next attempt would be due; an IP address needs no resolution.
    """
    endpoint = tcpEndpoint(reactor, host, 6379, timeout=2)
    assert type(endpoint) is kind
    assert endpoint._timeout == 2  # type: ignore[attr-defined]
    redisHost = f"[{host}]" if ":" in host else host
    assert type(endpointFor(reactor, parseRegistryURL(f"redis://{redisHost}:6379"))) is kind
