"""
Names cannot escape their namespace: every name, namespace or pattern is
either refused (a ValueError naming the value and the rule, before anything
is sent) or confined to its own namespace's keys and rows, on every backend.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from tests.helpers import Events, RedisServer, eventually, record, withoutExpiry
from txmasse import NAME_RULE, Glob, PeerRecord, validateName
from txmasse.registry.interface import IRegistry
from txmasse.registry.memory import MemoryRegistry

BACKENDS = pytest.mark.parametrize(
    "make_registry", ["memory", "redis", "sqlite", "etcd"], indirect=True
)
MakeRegistry = Callable[..., IRegistry]

HOSTILE = [
    "",
    "a:b",
    "a{b",
    "a}b",
    "{dev}",
    "dev}:n:db",
    "a/b",
    "a\\b",
    "a\x00b",
    "\x00",
    "a\nb",
    "dev\r\n",
    "a\tb",
    "a\x1bb",
    "a\x7fb",
    "a b",
    "a*",
    "a?",
    "a[b]",
    "a%b",
    "%a",
    "a%.b",
    ".a",
    "-a",
    "_a",
    "..",
    "a" * 129,
    "a" * 100_000,
    "\u00e9",
    "d\u00e9v",
    "dev\u2028",
    "\uff44\uff45\uff56",  # fullwidth "dev"
    "\U0001f600",
    "masse:{dev}:names",
]
"""Names and namespaces that must be refused."""

HOSTILE_PATTERNS = [
    "",
    "a:b",
    "*:*",
    "{dev}",
    "*}:*",
    "a/b",
    "a\\*",
    "\x00",
    "*\x00",
    "*\n",
    "a%*",
    "%a",
    "%.*",
    "a b",
    "a" * 257,
    "*" * 100_000,
    "\u00e9*",
    "*\u2028",
    "[",
    "[]",
    "[a",
    "]",
    "a!b",
    "^a",
    "[%]",
    "[.-z]",
    "[z-a]",
    "[a:b]",
    "[\x00]",
]
"""Patterns that must be refused."""


def shown(value: object) -> str:
    """
    How an error message quotes a value (long ones cut short).
    """
    text = repr(value)
    return text if len(text) <= 80 else text[:77]


@BACKENDS
@pytest.mark.parametrize("value", [*HOSTILE, None, 5, b"dev"])
@pytest_twisted.ensureDeferred
async def test_hostile_names_and_namespaces_are_refused(
    make_registry: MakeRegistry, value: Any
) -> None:
    registry = make_registry()
    calls: dict[str, list[Callable[[], Any]]] = {
        "namespace": [
            lambda: registry.lookup(value, "db"),
            lambda: registry.find(value, "*"),
            lambda: registry.leases(value, "*"),
            lambda: registry.watch(value, "*", print),
        ],
        "name": [lambda: registry.lookup("dev", value)],
    }
    for what, attempts in calls.items():
        for attempt in attempts:
            with pytest.raises(ValueError) as caught:
                await attempt()
            message = str(caught.value)
            assert message.startswith(f"invalid {what} {shown(value)}"), message
            assert NAME_RULE in message and message.isprintable(), message
        with pytest.raises(ValueError, match=f"invalid {what}"):
            PeerRecord(**{"namespace": "dev", "name": "db", what: value, "endpoints": ["tcp:h"]})
    with pytest.raises(ValueError, match="invalid instance id"):
        record(instance=value)
    with pytest.raises(ValueError, match="invalid metadata key"):
        record(metadata={value: "x"})


@BACKENDS
@pytest.mark.parametrize("pattern", [*HOSTILE_PATTERNS, None, 5])
@pytest_twisted.ensureDeferred
async def test_hostile_patterns_are_refused(make_registry: MakeRegistry, pattern: Any) -> None:
    registry = make_registry()
    for attempt in (
        lambda: registry.find("dev", pattern),
        lambda: registry.leases("dev", pattern),
        lambda: registry.watch("dev", pattern, print),
    ):
        with pytest.raises(ValueError) as caught:
            await attempt()
        message = str(caught.value)
        assert message.isprintable(), message
        assert message.startswith(f"invalid pattern {shown(pattern)}") or (
            "invalid range" in message and "in pattern class" in message
        ), message


@pytest_twisted.ensureDeferred
async def test_refused_calls_send_nothing(redis_server: RedisServer, make_registry: Any) -> None:
    """
    Refused before anything is sent: the store stays empty and Redis ran
    no command for them.
    """
    registry = make_registry()
    await registry.lookup("dev", "warm-up")
    before = redis_server.commandCalls()
    for value in HOSTILE:
        for method, args in (
            (registry.lookup, (value, "db")),
            (registry.lookup, ("dev", value)),
            (registry.find, (value, "*")),
            (registry.watch, (value, "*", print)),
        ):
            with pytest.raises(ValueError):
                await method(*args)
    for pattern in HOSTILE_PATTERNS:
        with pytest.raises(ValueError):
            await registry.find("dev", pattern)
    after = redis_server.commandCalls()
    ran = {name for name, count in after.items() if count != before.get(name, 0)}
    assert ran <= {"info", "ping"}, ran
    assert redis_server.command("DBSIZE") == 0


# Confinement: what is accepted stays in its namespace

NAMESPACES = ["a", "a.b", "a-b", "a_b", "ab", "A", "a.", "0", "x" * 128]
NAMES = ["b", "b.c", "c", "b-1", "b1", "exp", "names", "n", "seq", "gone", "events", "y" * 128]
"""Namespaces that are prefixes of each other, names that are prefixes of
each other or that spell the store's own key suffixes."""


async def populate(registry: IRegistry) -> dict[tuple[str, str], str]:
    """
    Register every name in every namespace; map (namespace, name) to the
    instance registered there.
    """
    instances = {}
    for namespace in NAMESPACES:
        for name in NAMES:
            lease = await registry.register(record(name, namespace=namespace), 30)
            instances[namespace, name] = lease.record.instance
    return instances


@BACKENDS
@pytest_twisted.ensureDeferred
async def test_each_namespace_sees_only_its_own(make_registry: MakeRegistry) -> None:
    registry = make_registry()
    instances = await populate(registry)
    for namespace in NAMESPACES:
        for name in NAMES:
            (one,) = await registry.lookup(namespace, name)
            assert (one.namespace, one.name) == (namespace, name)
            assert one.instance == instances[namespace, name]
        for pattern in ("*", "?", "b*", "*.*", "[a-z]*", "b?c", "*[^.]", "*-*", "y*"):
            glob = Glob(pattern)
            found = await registry.find(namespace, pattern)
            assert {r.namespace for r in found} <= {namespace}
            assert sorted(r.name for r in found) == sorted(n for n in NAMES if glob.matches(n))
            leases = await registry.leases(namespace, pattern)
            assert sorted(s.record.instance for s in leases) == sorted(r.instance for r in found)
    for name in ("b.", "b.c.d", "bb", "B", "e", "exp1", "y" * 127):
        assert await registry.lookup("a", name) == []
    for namespace in ("a.b.c", "b", "a.b.", "x" * 127, "AB", "a0"):
        assert await registry.find(namespace, "*") == []


@BACKENDS
@pytest_twisted.ensureDeferred
async def test_watchers_hear_only_their_namespace(make_registry: MakeRegistry) -> None:
    registry, other = make_registry(), make_registry()
    heard = {namespace: Events() for namespace in ("a", "a.b", "A")}
    for namespace, events in heard.items():
        await registry.watch(namespace, "*", events, usage=True)
    for namespace in ("a.b", "A", "a", "ab", "a-b"):
        lease = await other.register(record("b", namespace=namespace), 30)
        await other.report(_connected(lease.record))
        await lease.release()
    # Written after all the above, so heard after anything that leaked.
    for namespace in heard:
        await other.register(record("last", namespace=namespace), 30)
    await eventually(lambda: all(events.kinds("last") for events in heard.values()))
    for namespace, events in heard.items():
        assert [(e.kind, e.record.namespace) for e in events] == [
            ("joined", namespace),
            ("connected", namespace),
            ("left", namespace),
            ("joined", namespace),
        ]


def _connected(peer: PeerRecord) -> Any:
    from txmasse import EventKind, PeerEvent

    return PeerEvent(EventKind.CONNECTED, peer, "client:1")


_KEY = re.compile(r"masse:\{([^{}]*)\}:(n:[^:]*|exp|names|seq|gone|gonet)")


def scan(server: RedisServer) -> list[str]:
    keys: list[str] = []
    cursor = b"0"
    while True:
        cursor, batch = server.command("SCAN", cursor, "COUNT", 1000)
        keys += [key.decode() for key in batch]
        if cursor == b"0":
            return keys


@pytest_twisted.ensureDeferred
async def test_redis_keys_are_exactly_under_their_namespace(
    redis_server: RedisServer, make_registry: Any
) -> None:
    registry = make_registry()
    instances = await populate(registry)
    gone = await registry.register(record("gone-peer", namespace="a.b"), 30)
    await gone.release()  # leaves a tombstone and an event counter
    await registry.watch("a", "*", print)
    channels = redis_server.command("PUBSUB", "CHANNELS")
    assert [c.decode() for c in channels] == ["masse:{a}:events"]

    keys = scan(redis_server)
    seen: dict[str, set[str]] = {}
    for key in keys:
        match = _KEY.fullmatch(key)
        assert match is not None, f"a key outside the layout: {key!r}"
        namespace, suffix = match.groups()
        assert namespace in NAMESPACES, key
        seen.setdefault(namespace, set()).add(suffix)
        prefix = f"masse:{{{namespace}}}:"
        if suffix.startswith("n:"):
            name = suffix[2:]
            stored = redis_server.command("HGETALL", key)
            for instance, data in zip(stored[::2], stored[1::2], strict=True):
                parsed = PeerRecord.fromJSON(withoutExpiry(data))
                assert (parsed.namespace, parsed.name) == (namespace, name)
                assert parsed.instance == instance.decode() == instances[namespace, name]
        elif suffix in ("exp", "names"):
            members = redis_server.command("ZRANGE", key, 0, -1)
            listed = [m.decode().partition("/")[0] for m in members]
            assert sorted(listed) == sorted(NAMES), key
            for name in listed:
                assert redis_server.command("EXISTS", f"{prefix}n:{name}") == 1
    assert set(seen) == set(NAMESPACES)
    for namespace, suffixes in seen.items():
        names = {f"n:{name}" for name in NAMES}
        extra = {"gone", "gonet"} if namespace == "a.b" else set()
        assert suffixes == names | {"exp", "names", "seq"} | extra, namespace


@pytest.mark.parametrize("make_registry", ["sqlite"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_sqlite_rows_carry_their_namespace(make_registry: Any, tmp_path: Path) -> None:
    registry = make_registry()
    instances = await populate(registry)
    gone = await registry.register(record("gone-peer", namespace="a.b"), 30)
    await gone.release()
    with closing(sqlite3.connect(tmp_path / "registry.db")) as db:
        rows = db.execute("SELECT namespace, name, instance, record FROM masse_records").fetchall()
        assert len(rows) == len(NAMESPACES) * len(NAMES)
        for namespace, name, instance, data in rows:
            parsed = PeerRecord.fromJSON(data)
            assert (parsed.namespace, parsed.name, parsed.instance) == (namespace, name, instance)
            assert instances[namespace, name] == instance
        for namespace, data in db.execute("SELECT namespace, record FROM masse_events"):
            assert json.loads(data)["ns"] == namespace
        assert db.execute("SELECT namespace FROM masse_gone").fetchall() == [("a.b",)]


# Properties, on the memory registry (the others share its checks, above)

SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@given(st.text(max_size=140) | st.binary(max_size=20).map(lambda b: b.decode("latin-1")))
@settings(max_examples=300, deadline=None)
def test_any_text_is_a_safe_name_or_refused(value: str) -> None:
    try:
        validateName(value)
    except ValueError as e:
        message = str(e)
        assert message.startswith(f"invalid name {shown(value)}") and NAME_RULE in message
        assert message.isprintable()
    else:
        assert SAFE.fullmatch(value) and not set(value) & set(":{}/\\*?[]%\x00\n ")


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_text_is_a_confined_pattern_or_refused(value: str) -> None:
    try:
        glob = Glob(value)
    except ValueError as e:
        assert str(e).isprintable()
    else:
        assert re.fullmatch(r"[A-Za-z0-9._\-*?\[\]!^]{1,256}", value)
        assert re.fullmatch(r"[A-Za-z0-9._-]*", glob.prefix)


SMALL_NAMES = st.from_regex(r"[ab][ab.-]{0,3}", fullmatch=True)


@given(
    st.lists(st.tuples(SMALL_NAMES, SMALL_NAMES), min_size=1, max_size=12),
    st.lists(st.sampled_from(["*", "?", "a", "b", ".", "-", "[ab]", "[^.]", "[a-b]"]), max_size=4),
)
@settings(max_examples=150, deadline=None)
def test_writes_in_one_namespace_never_show_in_another(
    registrations: list[tuple[str, str]], tokens: list[str]
) -> None:
    registry = MemoryRegistry(Clock())
    leases: list[Any] = []
    for namespace, name in registrations:
        registry.register(record(name, namespace=namespace), 30).addCallback(leases.append)
    pattern = "".join(tokens) or "*"
    glob = Glob(pattern)
    for namespace in {ns for ns, _ in registrations} | {"a", "b", "a.b"}:
        results: list[list[PeerRecord]] = []
        registry.find(namespace, pattern).addCallback(results.append)
        (found,) = results
        expected = sorted(n for ns, n in registrations if ns == namespace and glob.matches(n))
        assert sorted(r.name for r in found) == expected
        assert all(r.namespace == namespace for r in found)
    for lease in leases:
        lease.release()
