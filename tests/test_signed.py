"""
Signed records: with a shared secret, records that are not signed by it
(unsigned, another key, tampered, a signature copied from another record, a
record replayed from another namespace) are ignored by lookups, finds,
listings and watchers, logged once and counted, on every backend.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.logger import LogEvent
from zope.interface.verify import verifyObject

from tests.helpers import (
    Events,
    MakeRegistry,
    RedisServer,
    eventually,
    masse,
    newRegistry,
    record,
    warningsIn,
)
from txmasse import EventKind, PeerEvent, PeerRecord
from txmasse.registry import freshness, registryFromURL
from txmasse.registry.interface import ILease, IRegistry, ISubscription, StaleRecords
from txmasse.registry.memory import MemoryRegistry
from txmasse.registry.signed import (
    NO_SIGNATURE,
    WRONG_SIGNATURE,
    SignedRegistry,
    loadSecrets,
)

BACKENDS = pytest.mark.parametrize(
    "make_registry", ["memory", "redis", "sqlite", "etcd"], indirect=True
)

SECRET = "correct-horse-battery-staple"
OTHER_SECRET = "tr0ub4dor&3-tr0ub4dor&3"


def secretsFile(directory: Path, text: str, name: str = "secrets") -> str:
    path = directory / name
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


@pytest.fixture(autouse=True)
def _no_secrets_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MASSE_SECRETS", raising=False)


@pytest.fixture
def signing(
    make_registry: MakeRegistry, tmp_path: Path
) -> Callable[..., tuple[SignedRegistry, IRegistry]]:
    """
    A signed registry over a new backend registry (of the test's kind), and
    that backend, through which a forger writes straight into the store.
    """

    def make(text: str = f"{SECRET}\n") -> tuple[SignedRegistry, IRegistry]:
        store = make_registry()
        return SignedRegistry(store, loadSecrets(secretsFile(tmp_path, text))), store

    return make


def forgeries(good: PeerRecord, tmp_path: Path) -> dict[str, PeerRecord]:
    """
    Records of the name C{good} has that no holder of the secret signed.
    """
    other = SignedRegistry(
        MemoryRegistry(reactor), loadSecrets(secretsFile(tmp_path, OTHER_SECRET, "other"))
    )
    mine = SignedRegistry(
        MemoryRegistry(reactor), loadSecrets(secretsFile(tmp_path, SECRET, "mine"))
    )
    evil = ["tcp:host=203.0.113.66:port=6666"]
    return {
        "unsigned": record(good.name, port=6601),
        "other key": other.sign(record(good.name, port=6602)),
        "tampered endpoints": attrs.evolve(mine.sign(record(good.name)), endpoints=evil),
        "tampered metadata": attrs.evolve(mine.sign(record(good.name)), metadata={"x": "y"}),
        "copied signature": attrs.evolve(record(good.name, port=6603), signature=good.signature),
        "replayed from another namespace": attrs.evolve(
            mine.sign(record(good.name, namespace="prod")), namespace="dev"
        ),
    }


@BACKENDS
@pytest_twisted.ensureDeferred
async def test_forged_records_are_ignored_logged_and_counted(
    signing: Any, tmp_path: Path, logged: Sequence[LogEvent]
) -> None:
    registry, store = signing()
    lease = await registry.register(record("db"), 30)
    good = lease.record
    assert good.signature is not None and registry.problem(good) is None
    forged = forgeries(good, tmp_path)
    for fake in forged.values():
        await store.register(fake, 30)  # a writer without the secret
    assert len(await store.lookup("dev", "db")) == 1 + len(forged)

    assert await registry.lookup("dev", "db") == [good]
    assert await registry.find("dev", "d*") == [good]
    assert [s.record for s in await registry.leases("dev", "*")] == [good]
    assert registry.rejected["dev"] == 3 * len(forged)

    # Each is logged once, however often it is met, naming why.
    warnings = warningsIn(logged)
    rejected = [w for w in warnings if "ignoring a record" in w]
    assert len(rejected) == len(forged)
    for why, fake in forged.items():
        (line,) = [w for w in rejected if fake.instance in w]
        expected = NO_SIGNATURE if why == "unsigned" else WRONG_SIGNATURE
        assert f"with {expected} in namespace dev" in line, line
    assert all(SECRET not in w for w in warnings)

    audited = await registry.audit("dev", "*")
    assert sorted((s.record.instance, why) for s, why in audited) == sorted(
        [(good.instance, None)]
        + [
            (f.instance, NO_SIGNATURE if f.signature is None else WRONG_SIGNATURE)
            for f in forged.values()
        ]
    )
    assert registry.rejected["dev"] == 4 * len(forged)


@BACKENDS
@pytest_twisted.ensureDeferred
async def test_watchers_ignore_forged_records(signing: Any, tmp_path: Path) -> None:
    peer, store = signing()
    watcher, _ = signing()
    early = await store.register(record("db", port=6600), 30)  # forged before the watch
    events = Events()
    subscription = await watcher.watch("dev", "*", events, usage=True)
    assert ISubscription.providedBy(subscription) and verifyObject(ISubscription, subscription)
    assert subscription.synced
    assert list(subscription.peers) == []

    lease = await peer.register(record("db"), 30)
    good = lease.record
    for fake in forgeries(good, tmp_path).values():
        await store.register(fake, 30)
    await peer.register(record("web"), 30)
    await eventually(lambda: events.kinds() == [("joined", "db"), ("joined", "web")])
    await eventually(lambda: watcher.rejected["dev"] >= 1 + 6)
    assert events[0].record == good
    assert sorted(r.name for r in subscription.peers) == ["db", "web"]

    # Stream-use reports about forged records are dropped too.
    await store.report(PeerEvent(EventKind.CONNECTED, early.record, "client:1"))
    await store.report(PeerEvent(EventKind.CONNECTED, good, "client:2"))
    await eventually(lambda: len(events) == 3)
    assert (events[2].kind, events[2].source) == ("connected", "client:2")

    await early.release()
    await lease.release()
    await eventually(lambda: len(events) == 4)
    assert (events[3].kind, events[3].record) == ("left", good)
    await peer.register(record("last"), 30)  # heard after anything the forger's release sent
    await eventually(lambda: events.kinds("last") == [("joined", "last")])
    assert len(events) == 5
    subscription.stop()
    assert not subscription.synced


@BACKENDS
@pytest_twisted.ensureDeferred
async def test_a_forged_update_counts_as_leaving(signing: Any) -> None:
    """
    A record overwritten by a forgery (same instance, other endpoints): the
    watcher hears C{left} with the last good record and stops using the
    address; the real peer's next heartbeat writes its record back, and the
    watcher hears C{joined} again.
    """
    peer, store = signing()
    watcher, _ = signing()
    events = Events()
    subscription = await watcher.watch("dev", "db", events)
    lease = await peer.register(record("db"), 30)
    good = lease.record
    await eventually(lambda: events.kinds() == [("joined", "db")])
    joined = subscription.peers
    assert subscription.peers is joined  # the same tuple until the instances change

    hijack = attrs.evolve(good, endpoints=["tcp:host=203.0.113.66:port=6666"])
    await store.putRecord(hijack, 30)
    await eventually(lambda: len(events) == 2)
    assert (events[1].kind, events[1].record) == ("left", good)
    assert list(subscription.peers) == [] and list(joined) == [good]
    assert await watcher.lookup("dev", "db") == []

    await lease.refresh()  # the real peer's heartbeat
    await eventually(lambda: len(events) == 3)
    assert (events[2].kind, events[2].record) == ("joined", good)
    assert list(subscription.peers) == [good]
    assert await watcher.lookup("dev", "db") == [good]


@BACKENDS
@pytest_twisted.ensureDeferred
async def test_a_copy_with_a_bad_signature_hides_the_peer_only_until_its_heartbeat(
    signing: Any,
) -> None:
    """
    The same record with a wrong signature, written before a watcher
    starts: that watcher ignores it; the real peer's heartbeat restores the
    signature, which the watcher hears as C{joined} (records equal but for
    their signature are news).
    """
    peer, store = signing()
    watcher, _ = signing()
    lease = await peer.register(record("db"), 30)
    good = lease.record
    await store.putRecord(attrs.evolve(good, signature="0" * 64), 30)
    events = Events()
    subscription = await watcher.watch("dev", "db", events)
    assert list(subscription.peers) == []
    await lease.refresh()
    await eventually(lambda: events.kinds() == [("joined", "db")])
    assert list(subscription.peers) == [good]


@BACKENDS
@pytest_twisted.ensureDeferred
async def test_signed_and_unsigned_namespaces_side_by_side(signing: Any) -> None:
    registry, store = signing(f"# only dev is signed\n\ndev {SECRET}\n")
    assert registry.signs("dev") and not registry.signs("prod")
    signedLease = await registry.register(record("db"), 30)
    plainLease = await registry.register(record("db", namespace="prod"), 30)
    assert signedLease.record.signature is not None
    assert plainLease.record.signature is None
    assert type(plainLease) is not type(signedLease)  # prod passes straight through

    stranger = await store.register(record("db", port=1), 30)
    strangerInProd = await store.register(record("db", namespace="prod", port=1), 30)
    assert await registry.lookup("dev", "db") == [signedLease.record]
    assert sorted(r.instance for r in await registry.lookup("prod", "db")) == sorted(
        [plainLease.record.instance, strangerInProd.record.instance]
    )
    assert registry.rejected == {"dev": 1}
    del stranger


@BACKENDS
@pytest_twisted.ensureDeferred
async def test_updates_are_signed_again(signing: Any) -> None:
    peer, _ = signing()
    watcher, _ = signing()
    lease = await peer.register(record("db"), 30)
    assert ILease.providedBy(lease) and verifyObject(ILease, lease)
    events = Events()
    await watcher.watch("dev", "db", events)
    changed = attrs.evolve(lease.record, metadata={"v": "2"})  # carries the old signature
    await lease.update(changed)
    await eventually(lambda: len(events) == 1)
    assert events[0].kind == EventKind.UPDATED and events[0].record.metadata == {"v": "2"}
    assert peer.problem(lease.record) is None and lease.record.signature != changed.signature
    assert await watcher.lookup("dev", "db") == [lease.record]
    assert lease.ttl == 30
    await lease.release()
    assert await watcher.lookup("dev", "db") == []
    assert watcher.rejected == {}


def test_signatures_are_per_namespace_even_with_one_secret(tmp_path: Path) -> None:
    registry = SignedRegistry(MemoryRegistry(reactor), loadSecrets(secretsFile(tmp_path, SECRET)))
    one = registry.sign(record("db", instance="i1", registered=1.0))
    other = registry.sign(record("db", namespace="prod", instance="i1", registered=1.0))
    assert one.signature != other.signature
    assert one.signature is not None and len(one.signature) == 64
    # deterministic; the old signature is not signed
    assert registry.sign(one).signature == one.signature
    assert PeerRecord.fromJSON(one.toJSON()).signature == one.signature
    assert one == record("db", instance="i1", registered=1.0)  # equal however signed
    assert b'"sig"' not in record().toJSON()  # unsigned records serialise as before


@pytest.mark.parametrize(
    "signature", ["", "short", "x" * 257, "not hex!" * 4, "\n" * 20, 12345678901234567890]
)
def test_bad_signature_values_are_refused(signature: object) -> None:
    with pytest.raises(ValueError, match="invalid signature"):
        record(signature=signature)
    data = record().toJSON()[:-1] + b',"sig":' + repr(signature).replace("'", '"').encode() + b"}"
    with pytest.raises(ValueError):
        PeerRecord.fromJSON(data)


def test_stale_answers_are_filtered_and_stay_stale(tmp_path: Path) -> None:
    good = SignedRegistry(MemoryRegistry(reactor), loadSecrets(secretsFile(tmp_path, SECRET)))
    fresh = good.stamp(good.sign(record("db")), 1.0)  # fresh 3 s ago, as the answer was
    answer = StaleRecords([fresh, record("db")], 3.0, "registry is down")

    class Down(MemoryRegistry):
        def lookup(self, namespace: str, name: str, stale: float | None = None) -> Any:
            return succeed(answer)

    registry = SignedRegistry(Down(reactor), good.secrets)
    results: list[Any] = []
    registry.lookup("dev", "db", stale=10).addCallback(results.append)
    (kept,) = results
    assert isinstance(kept, StaleRecords) and kept.age == 3.0 and kept.reason == answer.reason
    assert list(kept) == [answer[0]]


# The secrets file


@pytest.mark.parametrize(
    "text, namespaces",
    [
        (f"{SECRET}\n", {"dev": True, "anything": True}),
        (f"  {SECRET}  ", {"dev": True}),
        (f"# comment\n\ndev {SECRET}\nprod\t{OTHER_SECRET}\n", {"dev": True, "x": False}),
    ],
)
def test_secrets_files_that_parse(tmp_path: Path, text: str, namespaces: dict[str, bool]) -> None:
    secrets = loadSecrets(secretsFile(tmp_path, text))
    for namespace, signed in namespaces.items():
        assert (secrets.keyFor(namespace) is not None) == signed
    assert SECRET not in repr(secrets) and OTHER_SECRET not in repr(secrets)


@pytest.mark.parametrize(
    "text, where, why",
    [
        ("", "", "has no secret"),
        ("# nothing\n\n", "", "has no secret"),
        ("short\n", " line 1", "16 or more printable characters"),
        (f"\n{SECRET} {SECRET} {SECRET}\n", " line 2", "has 3 words"),
        (f"{SECRET}\n{OTHER_SECRET}\n", " line 2", "must be the file's only line"),
        (f"dev {SECRET}\n{OTHER_SECRET}\n", " line 2", "must be the file's only line"),
        (f"{SECRET}\ndev {OTHER_SECRET}\n", " line 2", "must be the file's only line"),
        (f"{SECRET} dev\n", " line 1", "16 or more"),
        (f"{OTHER_SECRET} {SECRET}\n", " line 1", "the namespace is not a letter or digit"),
        (f"dev {SECRET}\ndev {OTHER_SECRET}\n", " line 2", "'dev' has a secret already"),
        (f"d/ev {SECRET}\n", " line 1", "the namespace is not"),
        ("dev caf\u00e9-caf\u00e9-caf\u00e9-caf\u00e9\n", "", "is not ASCII text"),
    ],
)
def test_bad_secrets_files_name_file_and_line(
    tmp_path: Path, text: str, where: str, why: str
) -> None:
    path = secretsFile(tmp_path, text)
    with pytest.raises(ValueError) as caught:
        loadSecrets(path)
    message = str(caught.value)
    assert message.startswith(f"secrets file {path!r}{where}: "), message
    assert why in message and "\n" not in message
    assert SECRET not in message and OTHER_SECRET not in message


def test_unreadable_secrets_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"secrets file '.*missing': cannot read it: No such file"):
        loadSecrets(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="cannot read it: Is a directory"):
        loadSecrets(str(tmp_path))


# Configuration by URL and environment


@pytest.mark.parametrize(
    "url",
    [
        "memory://?secrets={path}",
        "sqlite:///{dir}/r.db?secrets={path}",
        "redis://127.0.0.1:1/0?secrets={path}&timeout=0.5",
    ],
)
@pytest_twisted.ensureDeferred
async def test_secrets_option_on_every_scheme(tmp_path: Path, url: str) -> None:
    path = secretsFile(tmp_path, SECRET)
    registry = registryFromURL(reactor, url.format(path=path, dir=tmp_path))
    try:
        assert isinstance(registry, SignedRegistry) and verifyObject(IRegistry, registry)
        assert registry.secrets.path == path
        assert SECRET not in registry.url and SECRET not in repr(registry)
        assert registry.url == registry.registry.url  # a path at most, never a secret
    finally:
        await registry.close()
    assert registry.closed


def test_secrets_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = secretsFile(tmp_path, f"dev {SECRET}")
    monkeypatch.setenv("MASSE_SECRETS", path)
    registry = newRegistry("memory://")
    assert isinstance(registry, SignedRegistry) and registry.signs("dev")
    monkeypatch.setenv("MASSE_SECRETS", str(tmp_path / "gone"))
    with pytest.raises(ValueError, match=r"secrets file .*gone.: cannot read it"):
        newRegistry("memory://")
    monkeypatch.delenv("MASSE_SECRETS")
    assert isinstance(newRegistry("memory://"), MemoryRegistry)


def test_bad_secrets_option(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="option secrets needs the path"):
        newRegistry("memory://?secrets=")
    path = secretsFile(tmp_path, "too short")
    with pytest.raises(ValueError, match=f"secrets file '{path}' line 1"):
        newRegistry(f"redis://127.0.0.1:1/0?secrets={path}")


# masse ls --all


def test_masse_ls_all_shows_and_counts_forgeries(redis_server: RedisServer, tmp_path: Path) -> None:
    path = secretsFile(tmp_path, f"dev {SECRET}\n")
    url = f"{redis_server.url}?secrets={path}"
    signer = SignedRegistry(MemoryRegistry(reactor), loadSecrets(path))
    good = signer.stamp(signer.sign(record("db")), 600)
    forged = attrs.evolve(good, endpoints=["tcp:host=203.0.113.66:port=6666"], instance="evil")
    expires = int(redis_server.command("TIME")[0]) * 1000 + 600_000
    for rec in (good, forged, record("web", instance="plain")):
        data = freshness.stored(rec)
        redis_server.command("HSET", f"masse:{{dev}}:n:{rec.name}", rec.instance, data)
        redis_server.command("ZADD", "masse:{dev}:exp", expires, f"{rec.name}/{rec.instance}")
        redis_server.command("ZADD", "masse:{dev}:names", 0, rec.name)

    plain = masse("ls", registry=url)
    assert plain.returncode == 0, plain.stderr
    assert [line.split()[0] for line in plain.stdout.splitlines()] == ["NAME", "db"]

    listed = masse("ls", "--all", registry=url)
    assert listed.returncode == 0, listed.stderr
    header, *rows, total = listed.stdout.splitlines()
    assert header.split()[-1] == "STATUS"
    statuses = {row.split()[1]: row.split("  ")[-1].strip() for row in rows}
    assert statuses == {
        good.instance[:12]: "ok",
        "evil": "REJECTED: wrong signature",
        "plain": "REJECTED: no signature",
    }
    assert total == "rejected in namespace dev: 2"
    assert "ignoring a record" not in listed.stderr

    asJSON = masse("ls", "--all", "--jsonl", registry=url)
    lines = {
        entry["instance"]: entry["rejected"]
        for entry in map(json.loads, asJSON.stdout.splitlines())
    }
    assert lines == {good.instance: None, "evil": WRONG_SIGNATURE, "plain": NO_SIGNATURE}

    unsigned = masse("--ns", "prod", "ls", "--all", registry=url)
    assert unsigned.stdout.splitlines()[-1] == "namespace prod is not signed"
    assert os.path.exists(path)
