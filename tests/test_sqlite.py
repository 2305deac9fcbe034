"""
The SQLite registry: processes sharing one file, processes killed mid-write,
files that are not ours, pruning, polling, and a reactor that never waits.

Run as a program, this module is a peer that writes as fast as it can:
python -m tests.test_sqlite hammer URL KILL_AT (0: never kill itself), or
exit URL to stop its reactor without closing the registry.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent

from tests.helpers import Events, eventually, newRegistry, record, sleep, warningsIn
from txmasse import PeerRecord, RegistryUnavailable
from txmasse.registry import sqlite as backend
from txmasse.registry.sqlite import SQLiteRegistry

ROOT = Path(__file__).parent.parent


def urlOf(path: Path, **options: object) -> str:
    query = "&".join(f"{key}={value}" for key, value in options.items())
    return f"sqlite://{quote(str(path))}" + (f"?{query}" if query else "")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "registry.db"


@pytest.fixture
def registries(db: Path) -> Iterator[Callable[..., SQLiteRegistry]]:
    made: list[SQLiteRegistry] = []

    def make(path: Path | None = None, **options: object) -> SQLiteRegistry:
        registry = newRegistry(urlOf(path or db, **{"timeout": 2, **options}))
        made.append(registry)
        return registry  # type: ignore[no-any-return]

    yield make
    for registry in made:
        pytest_twisted.blockon(registry.close())


def raw(path: Path) -> sqlite3.Connection:
    """
    A connection of the test's own, as another program would open the file.
    """
    return sqlite3.connect(str(path), isolation_level=None, timeout=5)


def peer(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def readline(process: subprocess.Popen[bytes]) -> bytes:
    assert process.stdout is not None
    line: bytes = await deferToThread(process.stdout.readline)
    return line


@pytest_twisted.ensureDeferred
async def test_killed_process_times_out(db: Path, registries: Any) -> None:
    poll, ttl = 0.1, 1.0
    watcher = registries(poll=poll)
    events = Events()
    await watcher.watch("dev", "victim", events)
    process = peer("-m", "tests.peer_process", urlOf(db), "dev", "victim", str(ttl))
    try:
        assert (await readline(process)).startswith(b"registered")
        registered = time.monotonic()
        await eventually(lambda: events.kinds() == [("joined", "victim")])
        print(f"joined seen {time.monotonic() - registered:.3f}s after the peer registered")
        assert len(await watcher.lookup("dev", "victim")) == 1
    finally:
        process.kill()
        process.wait()
    killed = time.monotonic()
    await eventually(lambda: len(events) == 2, timeout=ttl + poll + 3)
    detected = time.monotonic() - killed
    print(f"timedout {detected:.3f}s after SIGKILL (ttl {ttl}s, poll {poll}s)")
    assert events.kinds() == [("joined", "victim"), ("timedout", "victim")]
    assert detected <= ttl + poll + 1, f"timedout after {detected:.2f}s"
    assert await watcher.lookup("dev", "victim") == []


@pytest.mark.parametrize("killAt", [None, 700], ids=["from-outside", "inside-a-transaction"])
@pytest_twisted.ensureDeferred
async def test_process_killed_mid_write(db: Path, registries: Any, killAt: int | None) -> None:
    """
    A process that is nearly always inside a write transaction is SIGKILLed
    (by the test, or by itself in the middle of its 700th event): the file
    stays consistent, keeps every write committed, and works on.
    """
    await registries().lookup("dev", "h-0")  # create the file, so the hammer only writes
    process = peer("-m", "tests.test_sqlite", "hammer", urlOf(db), str(killAt or 0))
    try:
        first = await readline(process)
        assert first.startswith(b"registered")
        if killAt is None:
            await sleep(0.3)
        else:
            await deferToThread(process.wait, 10)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert process.stdout is not None
    # Odd names stay registered; even ones are released after each batch
    # (the last batch's perhaps without saying so before the kill).
    kept, released = set(), set()
    for line in [first, *process.stdout.read().splitlines()]:
        try:
            what, low, high = line.split()
        except ValueError:
            continue  # cut short by the kill
        for n in range(int(low), int(high)):
            if what == b"registered" and n % 2:
                kept.add(f"h-{n}")
            elif what == b"released" and not n % 2:
                released.add(f"h-{n}")
    assert len(kept) >= 50, "the hammer wrote too little to be meaningful"

    def check() -> str:
        with raw(db) as connection:
            return str(connection.execute("PRAGMA integrity_check").fetchone()[0])

    assert await deferToThread(check) == "ok"
    survivor = registries()
    found = {r.name for r in await survivor.find("dev", "h-*")}
    assert kept <= found, "a committed registration was lost"
    assert not (released & found), "a committed release was lost"
    lease = await survivor.register(record("after"), 5)
    assert await survivor.lookup("dev", "after") == [lease.record]
    await lease.release()
    assert await survivor.lookup("dev", "after") == []


def _text(tmp: Path) -> Path:
    path = tmp / "notes.txt"
    path.write_text("hello\n" * 200)
    return path


def _foreign(tmp: Path) -> Path:
    path = tmp / "app.db"
    with raw(path) as connection:
        connection.execute("CREATE TABLE users (name TEXT)")
    return path


def _newer(tmp: Path) -> Path:
    path = tmp / "newer.db"
    with raw(path) as connection:
        connection.execute(f"PRAGMA application_id = {backend.APPLICATION_ID}")
        connection.execute("PRAGMA user_version = 99")
        connection.execute("CREATE TABLE masse_records (x)")
    return path


def _directory(tmp: Path) -> Path:
    path = tmp / "dir.db"
    path.mkdir()
    return path


def _unreadable(tmp: Path) -> Path:
    if os.getuid() == 0:
        pytest.skip("root reads every file")
    path = tmp / "secret.db"
    path.write_bytes(b"")
    path.chmod(0)
    return path


@pytest.mark.parametrize(
    "make, why",
    [
        (_text, "file is not a database"),
        (_foreign, "it has other tables (users)"),
        (_newer, "its schema version is 99, this txmasse knows version 1"),
        (_directory, "it is a directory"),
        (lambda tmp: tmp / "nowhere" / "x.db", "no directory"),
        (_unreadable, "unable to open database file"),
    ],
    ids=["text", "foreign", "newer", "directory", "missing-directory", "unreadable"],
)
@pytest_twisted.ensureDeferred
async def test_refuses_what_is_not_its_database(
    tmp_path: Path, registries: Any, make: Callable[[Path], Path], why: str
) -> None:
    path = make(tmp_path)
    before = path.read_bytes() if path.is_file() and os.access(path, os.R_OK) else None
    registry = registries(path)
    for call in (lambda: registry.lookup("dev", "db"), lambda: registry.register(record(), 5)):
        with pytest.raises(RegistryUnavailable) as caught:
            await call()
        message = str(caught.value)
        assert str(path) in message and why in message, message
    if before is not None:
        assert path.read_bytes() == before, "the file was changed"


@pytest_twisted.ensureDeferred
async def test_pruning_and_catching_up(
    db: Path, registries: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer, watcher = registries(), registries()
    monkeypatch.setattr(watcher, "_schedulePoll", lambda now=False: None)  # polls when told
    peer._db.keepEvents = 5
    peer._db.pruneInterval = 0.0
    leases = [await peer.register(record(f"a{i}"), 5) for i in range(3)]
    short = await peer.register(record("a3"), 0.3)
    events = Events()
    await watcher.watch("dev", "*", events)

    # While the watcher is not looking: two leave, one times out, six join,
    # and the events that say so are pruned.
    await leases[0].release()
    await leases[1].release()
    short.stop()
    await eventually(lambda: _count(db, "masse_gone WHERE kind = 'timedout'") == 1)
    for i in range(6):
        await peer.register(record(f"b{i}"), 5)
    await eventually(lambda: _count(db, "masse_events") <= 5)
    assert _seq(db) > 10

    await watcher._call("poll", watcher._db.poll, ["dev"])
    await eventually(lambda: len(events) == 9)
    assert sorted(events.kinds()) == sorted(
        [("left", "a0"), ("left", "a1"), ("timedout", "a3")]
        + [("joined", f"b{i}") for i in range(6)]
    )

    # Old events and tombstones go too.
    peer._db.keepSeconds = 0.0
    await eventually(lambda: _count(db, "masse_events") == _count(db, "masse_gone") == 0)


def _count(path: Path, table: str) -> int:
    with raw(path) as connection:
        return int(connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def _seq(path: Path) -> int:
    with raw(path) as connection:
        return int(connection.execute(backend._SEQ_SQL).fetchone()[0])


@pytest_twisted.ensureDeferred
async def test_poll_interval_is_honoured(
    db: Path, registries: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    poll = 0.3
    peer, watcher = registries(), registries(poll=poll)
    polls: list[float] = []
    original = watcher._db.poll

    def counted(watched: list[str]) -> None:
        polls.append(time.monotonic())
        original(watched)

    monkeypatch.setattr(watcher._db, "poll", counted)
    events = Events()
    await watcher.watch("dev", "*", events)
    await sleep(1.5)
    gaps = [later - earlier for earlier, later in pairwise(polls)]
    assert 2 <= len(polls) <= 1.5 / poll + 1, polls
    assert min(gaps) >= poll - 0.01, gaps

    latencies = []
    for i in range(5):
        await sleep(0.05 * i)
        started = time.monotonic()
        await peer.register(record(f"db-{i}"), 5)
        await eventually(lambda i=i: len(events) == i + 1)  # type: ignore[misc]
        latencies.append(time.monotonic() - started)
    print("event latency with poll 0.3s: " + ", ".join(f"{t:.3f}s" for t in latencies))
    assert max(latencies) <= poll + 0.25, latencies


@pytest_twisted.ensureDeferred
async def test_reactor_never_waits(db: Path, registries: Any) -> None:
    registry = registries(timeout=0.5)
    await registry.lookup("dev", "db")  # opens the file
    threads: set[int] = set()

    def trace() -> None:
        assert registry._db._connection is not None
        registry._db._connection.set_trace_callback(lambda _: threads.add(threading.get_ident()))

    await registry._call("trace", trace)
    events = Events()
    await registry.watch("dev", "*", events)
    lease = await registry.register(record("db"), 5)

    # Another process holds the write lock: writes fail by their deadline,
    # reads go on, and the reactor keeps ticking meanwhile.
    ticks: list[float] = []
    loop = task.LoopingCall(lambda: ticks.append(time.monotonic()))
    loop.start(0.01)
    locker = raw(db)
    locker.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable) as caught:
            await registry.register(record("web"), 5)
        elapsed = time.monotonic() - started
        print(f"failed after {elapsed:.3f}s: {caught.value}")
        assert registry.url in str(caught.value)
        assert elapsed < 0.5 + 0.3, f"failed after {elapsed:.2f}s"
        assert await registry.lookup("dev", "db") == [lease.record]
    finally:
        locker.execute("ROLLBACK")
        locker.close()
        loop.stop()
    gaps = [later - earlier for earlier, later in pairwise(ticks)]
    assert max(gaps) < 0.2, f"the reactor stalled for {max(gaps):.2f}s"

    await registry.register(record("web"), 5)
    await eventually(lambda: events.kinds() == [("joined", "db"), ("joined", "web")])
    assert threads and threading.main_thread().ident not in threads


@pytest_twisted.ensureDeferred
async def test_garbage_rows_are_skipped(
    db: Path, registries: Any, logged: Sequence[LogEvent]
) -> None:
    registry = registries()
    events = Events()
    await registry.watch("dev", "*", events)
    good = await registry.register(record("db"), 5)
    late = PeerRecord("dev", "db", ["tcp:host=h:port=1"], instance="late")
    far = time.time() + 60
    with raw(db) as connection:
        rows = [
            ("bad1", "not json", far),
            ("bad2", record("web", instance="bad2").toJSON().decode(), far),
            ("bad3", 12345, far),
            ("late", late.toJSON().decode(), "whenever"),
        ]
        for instance, data, expires in rows:
            connection.execute(
                "INSERT INTO masse_records VALUES ('dev', 'db', ?, ?, ?)",
                (instance, data, expires),
            )
        for kind, data in [("joined", "{nope"), ("exploded", record("x").toJSON().decode())]:
            connection.execute(
                "INSERT INTO masse_events (namespace, kind, record, at) VALUES ('dev', ?, ?, 0)",
                (kind, data),
            )
    assert await registry.lookup("dev", "db") == [good.record]
    assert await registry.find("dev", "d*") == [good.record]
    await registry.register(record("web"), 5)
    await eventually(lambda: events.kinds() == [("joined", "db"), ("joined", "web")])
    assert _count(db, "masse_records WHERE instance = 'late'") == 0, "not timed out"
    text = "\n".join(warningsIn(logged))
    assert "bad record" in text and "bad event" in text, text


@pytest_twisted.ensureDeferred
async def test_queries_read_only_what_they_need(db: Path) -> None:
    """
    Lookups, prefix finds and sweeps are index searches: their cost does not
    grow with the other names in the file.
    """
    registry = SQLiteRegistry(reactor, str(db))
    await registry.lookup("dev", "x")
    await registry.close()
    with raw(db) as connection:
        for sql, args in [
            (backend.LOOKUP_SQL, ("dev", "db")),
            (backend.FIND_SQL, ("dev", "db-", "db-\x7f")),
            (backend.DUE_SQL, ("dev", 0.0, 10)),
        ]:
            plan = " ".join(r[-1] for r in connection.execute("EXPLAIN QUERY PLAN " + sql, args))
            assert plan.startswith("SEARCH") and "SCAN" not in plan, plan


@pytest_twisted.ensureDeferred
async def test_expiry_follows_the_wall_clock(db: Path) -> None:
    """
    Leases expire by the wall clock the processes share (here a fake one);
    timers run on the clock given (here one that never moves), so only
    lookups notice the expiry, and the first one announces it.
    """
    wall, clock = [1000.0], task.Clock()
    one, two = (SQLiteRegistry(reactor, str(db), clock=clock, now=lambda: wall[0]) for _ in "12")
    try:
        lease = await one.register(record(), 5)
        wall[0] += 4.9
        assert await two.lookup("dev", "db") == [lease.record]
        [status] = await two.leases("dev", "d*")
        assert status.record == lease.record and status.expiresIn == pytest.approx(0.1)
        wall[0] += 0.2
        assert await two.lookup("dev", "db") == []
        assert await one.lookup("dev", "db") == []
        assert _count(db, "masse_events WHERE kind = 'timedout'") == 1
        assert _count(db, "masse_gone WHERE kind = 'timedout'") == 1
        await lease.refresh()  # a late heartbeat registers it again
        assert await two.find("dev", "*") == [lease.record]
        assert _count(db, "masse_gone") == 0
    finally:
        await one.close()
        await two.close()


@pytest_twisted.ensureDeferred
async def test_relative_url_and_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    registry = newRegistry("sqlite:here.db?poll=0.05")
    assert registry.path == str(tmp_path / "here.db")
    await registry.register(record(), 5)
    assert (tmp_path / "here.db").exists()
    await registry.close()
    assert not any(thread.is_alive() for thread in registry._pool.threads)
    with pytest.raises(RegistryUnavailable, match="closed"):
        await registry.lookup("dev", "db")


def test_reactor_stops_without_close(db: Path) -> None:
    """
    A process that stops its reactor without closing the registry exits.
    """
    process = peer("-m", "tests.test_sqlite", "exit", urlOf(db))
    assert process.wait(timeout=20) == 0
    assert process.stdout is not None and process.stdout.read() == b"stopped\n"
    assert not Path(f"{db}-wal").exists(), "the registry was not closed on shutdown"


# The peers this module runs as subprocesses


async def _hammer(url: str, killAt: str) -> None:
    from txmasse.registry import registryFromURL

    if int(killAt):
        announce = backend._Database._announce
        announced = 0

        def killing(self: Any, *args: Any) -> None:
            nonlocal announced
            announce(self, *args)
            announced += 1
            if announced == int(killAt):
                os.kill(os.getpid(), signal.SIGKILL)

        backend._Database._announce = killing  # type: ignore[method-assign,assignment]

    registry = registryFromURL(reactor, url)
    low = 0
    while True:
        high = low + 20
        records = [PeerRecord("dev", f"h-{n}", ["tcp:host=h:port=1"]) for n in range(low, high)]
        leases = await gatherResults([registry.register(r, 60) for r in records])
        print("registered", low, high, flush=True)
        await gatherResults([lease.release() for lease in leases[::2]])
        print("released", low, high, flush=True)
        low = high


async def _exit(url: str, *args: str) -> None:
    from txmasse.registry import registryFromURL

    registry = registryFromURL(reactor, url)
    await registry.register(record(), 5)
    await registry.watch("dev", "*", lambda event: None)
    reactor.callLater(0.1, reactor.stop)
    await Deferred()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    main: Any = {"hammer": _hammer, "exit": _exit}[mode]
    Deferred.fromCoroutine(main(*args)).addErrback(lambda f: (f.printTraceback(), os._exit(1)))
    reactor.run()
    print("stopped", flush=True)
