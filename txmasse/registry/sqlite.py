"""
The SQLite registry: one database file shared by the processes of one
machine, with no server.

Every operation is one transaction (C{BEGIN IMMEDIATE} for writes) on a
connection of the registry's own, run on a thread of the registry's own, so
the reactor never waits for the disk or for another process's lock. The file
is in WAL mode: a process killed mid-write leaves it consistent.

Events are rows of C{masse_events}, numbered by an autoincrement id that
serves as the sequence number; watching processes poll for new rows every
C{poll} seconds (L{DEFAULT_POLL}). Old events and tombstones are pruned.

URLs: C{sqlite:///absolute/path.db}, or C{sqlite:relative/path.db} (from the
working directory), with options C{?timeout=SECONDS&poll=SECONDS}.

Leases expire at a wall-clock time, C{time.time()}, which the processes of
one machine share (so a step of the system clock moves every expiry). The
transaction that deletes an expired row is the one that announces its
timeout, so a timeout is announced exactly once. Each process with leases or
watchers in a namespace sweeps it at its next expiry (at least every
L{SWEEP_INTERVAL} seconds); lookups expire what they meet.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar
from urllib.parse import quote

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorCore,
    IReactorFromThreads,
    IReactorTime,
)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from txmasse.errors import RegistryUnavailable
from txmasse.records import Glob, PeerRecord
from txmasse.registry import freshness
from txmasse.registry.base import Snapshot
from txmasse.registry.checking import Key, Stored
from txmasse.registry.interface import (
    USAGE_KINDS,
    EventKind,
    IRegistry,
    LeaseStatus,
    PeerEvent,
)
from txmasse.registry.shared import SharedStoreRegistry
from txmasse.registry.url import RegistryURL

log = Logger()

T = TypeVar("T")

DEFAULT_POLL = 0.1
"""Seconds between two reads of new events by a watching process."""

SWEEP_BATCH = 500

KEEP_SECONDS = 600.0
"""Events and tombstones older than this are pruned..."""

KEEP_EVENTS = 10_000
"""...and so are events beyond the newest this many."""

PRUNE_INTERVAL = 10.0

KEEP_GONE = 10_000
"""
Most tombstones (what became of an instance: left or timed out) the file
keeps after a prune, the oldest deleted first; between prunes (every
L{PRUNE_INTERVAL} seconds) it may hold those of that interval's churn more.
"""

APPLICATION_ID = 0x6D617373
"""C{PRAGMA application_id} of a txmasse registry ("mass")."""

SCHEMA_VERSION = 1
"""C{PRAGMA user_version} of the schema below."""

_SCHEMA = (
    """CREATE TABLE masse_records (
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        instance TEXT NOT NULL,
        record TEXT NOT NULL,
        expires REAL NOT NULL,
        PRIMARY KEY (namespace, name, instance)
    ) WITHOUT ROWID""",
    "CREATE INDEX masse_records_expires ON masse_records (namespace, expires)",
    """CREATE TABLE masse_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        namespace TEXT NOT NULL,
        kind TEXT NOT NULL,
        record TEXT NOT NULL,
        at REAL NOT NULL
    )""",
    "CREATE INDEX masse_events_at ON masse_events (at)",
    """CREATE TABLE masse_gone (
        namespace TEXT NOT NULL,
        instance TEXT NOT NULL,
        kind TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (namespace, instance)
    ) WITHOUT ROWID""",
    "CREATE INDEX masse_gone_at ON masse_gone (at)",
    "CREATE TABLE masse_meta (key TEXT PRIMARY KEY, value)",
)

LOOKUP_SQL = (
    "SELECT name, instance, record, expires FROM masse_records WHERE namespace = ? AND name = ?"
)
FIND_SQL = (
    "SELECT name, instance, record, expires FROM masse_records"
    " WHERE namespace = ? AND name >= ? AND name < ?"
)
_FIND_ALL_SQL = "SELECT name, instance, record, expires FROM masse_records WHERE namespace = ?"
_ONE_SQL = (
    "SELECT record, expires FROM masse_records WHERE namespace = ? AND name = ? AND instance = ?"
)
_CAP_GONE_SQL = (
    "DELETE FROM masse_gone WHERE (namespace, instance) IN"
    " (SELECT namespace, instance FROM masse_gone ORDER BY at DESC LIMIT -1 OFFSET ?)"
)
DUE_SQL = "SELECT name, instance FROM masse_records WHERE namespace = ? AND expires <= ? LIMIT ?"
# Text and blobs sort after every number: rows with a garbage expiry.
_BAD_EXPIRY_SQL = (
    "SELECT name, instance FROM masse_records WHERE namespace = ? AND expires >= '' LIMIT ?"
)
_NEXT_SQL = "SELECT MIN(expires) FROM masse_records WHERE namespace = ?"
_SEQ_SQL = "SELECT seq FROM sqlite_sequence WHERE name = 'masse_events'"

_Row = tuple[Any, Any, Any, float]
"""name, instance, record JSON (as stored, unchecked), seconds left."""

_Event = tuple[int, Any, Any, Any]
"""id, namespace, kind, record JSON, as stored (unchecked)."""


class DatabaseRefused(Exception):
    """
    The path cannot be opened, or is not a txmasse registry database.
    """


class _Late(Exception):
    """
    A call's deadline passed before its turn on the registry's thread.
    """


def _body(data: object) -> object:
    """
    A stored record without its freshness stamp (L{freshness}).
    """
    if isinstance(data, str) and data[:1] != "{":
        return data.partition(" ")[2]
    return data


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _live(expires: object, now: float) -> bool:
    return _number(expires) and expires > now  # type: ignore[operator]


def _daemonThread(*args: Any, **kwargs: Any) -> threading.Thread:
    """
    A worker thread that cannot keep the process alive if the registry is
    never closed (e.g. a script that never runs the reactor).
    """
    return threading.Thread(*args, daemon=True, **kwargs)


class _Database:
    """
    The registry's connection to its file.

    Used only on the registry's own thread, one call at a time; it hands
    new events to C{deliver} (also called on that thread).
    """

    def __init__(self, path: str, now: Callable[[], float]):
        self.path = path
        self.now = now
        self.keepSeconds = KEEP_SECONDS
        self.keepEvents = KEEP_EVENTS
        self.pruneInterval = PRUNE_INTERVAL
        self.keepGone = KEEP_GONE
        self.deliver: Callable[[list[_Event], bool], None] = lambda events, gap: None
        self._connection: sqlite3.Connection | None = None
        self._cursor: int | None = None
        self._lastPrune = -math.inf

    def run(self, deadline: float, job: Callable[..., T], *args: Any) -> T:
        """
        Run C{job} unless C{deadline} (C{time.monotonic()}) has passed, and
        wait no longer than that for another process's lock.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Late()
        if self._connection is None:
            self._connection = self._open(remaining)
        # Give up on a lock a little before the deadline, to say why.
        self._connection.execute(f"PRAGMA busy_timeout = {max(1, int(remaining * 800))}")
        return job(*args)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # Opening and checking the file

    def _refused(self, why: str) -> DatabaseRefused:
        return DatabaseRefused(f"{self.path} is not a txmasse registry database: {why}")

    def _open(self, timeout: float) -> sqlite3.Connection:
        if os.path.isdir(self.path):
            raise self._refused("it is a directory")
        try:
            connection = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise DatabaseRefused(f"cannot open {self.path}: {e}{self._hint()}") from None
        try:
            self._check(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _hint(self) -> str:
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            return f" (no directory {directory})"
        if not os.access(self.path if os.path.exists(self.path) else directory, os.R_OK):
            return " (permission denied)"
        return ""

    def _check(self, connection: sqlite3.Connection) -> None:
        """
        Refuse a file that is not ours; make an empty one ours.
        """
        appId, version, tables = self._describe(connection)
        if appId == 0 and not tables:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("BEGIN IMMEDIATE")
            try:
                appId, version, tables = self._describe(connection)
                if appId == 0 and not tables:
                    for statement in _SCHEMA:
                        connection.execute(statement)
                    connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    appId, version = APPLICATION_ID, SCHEMA_VERSION
                connection.execute("COMMIT")
            finally:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
        if appId != APPLICATION_ID:
            if tables:
                shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
                raise self._refused(f"it has other tables ({shown})")
            raise self._refused(f"it belongs to another program (application id {appId:#x})")
        if version != SCHEMA_VERSION:
            raise self._refused(
                f"its schema version is {version}, this txmasse knows version {SCHEMA_VERSION}"
            )
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise DatabaseRefused(f"{self.path}: cannot use the WAL journal (got {mode})")
        connection.execute("PRAGMA synchronous = NORMAL")

    def _describe(self, connection: sqlite3.Connection) -> tuple[int, int, list[str]]:
        try:
            appId = connection.execute("PRAGMA application_id").fetchone()[0]
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            tables = [
                row[0]
                for row in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            ]
        except sqlite3.OperationalError:
            raise  # locked, I/O error: may work next time
        except sqlite3.DatabaseError as e:
            raise self._refused(str(e)) from None
        return appId, version, tables

    # Transactions

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        connection = self._connection
        assert connection is not None
        connection.execute(begin)
        try:
            yield connection
            connection.execute("COMMIT")
        finally:
            if connection.in_transaction:
                connection.execute("ROLLBACK")

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._transaction("BEGIN")

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._transaction("BEGIN IMMEDIATE")

    def _announce(self, c: sqlite3.Connection, ns: str, kind: str, data: Any, now: float) -> None:
        c.execute(
            "INSERT INTO masse_events (namespace, kind, record, at) VALUES (?, ?, ?, ?)",
            (ns, kind, data, now),
        )

    def _drop(
        self, c: sqlite3.Connection, ns: str, name: Any, instance: Any, kind: str, now: float
    ) -> None:
        """
        Remove a record and announce C{kind}, in the caller's write
        transaction: the one place a C{left} or C{timedout} is decided.
        """
        row = c.execute(_ONE_SQL, (ns, name, instance)).fetchone()
        if row is None:
            return
        c.execute(
            "DELETE FROM masse_records WHERE namespace = ? AND name = ? AND instance = ?",
            (ns, name, instance),
        )
        c.execute(
            "INSERT OR REPLACE INTO masse_gone (namespace, instance, kind, at) VALUES (?, ?, ?, ?)",
            (ns, instance, kind, now),
        )
        self._announce(c, ns, kind, row[0], now)

    # Operations, each one or two transactions

    def usage(self, ns: str, kind: str, source: str, data: str) -> None:
        """
        Record a stream-use report as an event, for watchers to poll.
        """
        with self._write() as c:
            self._announce(c, ns, kind, f"{source} {data}", self.now())

    def put(self, ns: str, name: str, instance: str, data: str, ttl: float) -> None:
        now = self.now()
        with self._write() as c:
            row = c.execute(_ONE_SQL, (ns, name, instance)).fetchone()
            old = None
            if row is not None:
                if _live(row[1], now):
                    old = row[0]
                else:
                    self._drop(c, ns, name, instance, EventKind.TIMEDOUT, now)
            c.execute(
                "INSERT OR REPLACE INTO masse_records (namespace, name, instance, record, expires)"
                " VALUES (?, ?, ?, ?, ?)",
                (ns, name, instance, data, now + ttl),
            )
            c.execute("DELETE FROM masse_gone WHERE namespace = ? AND instance = ?", (ns, instance))
            if old is None:
                self._announce(c, ns, EventKind.JOINED, data, now)
            elif _body(old) != _body(data):  # a new freshness stamp alone is no news
                self._announce(c, ns, EventKind.UPDATED, data, now)

    def remove(self, ns: str, name: str, instance: str) -> None:
        now = self.now()
        with self._write() as c:
            row = c.execute(_ONE_SQL, (ns, name, instance)).fetchone()
            if row is not None:
                kind = EventKind.LEFT if _live(row[1], now) else EventKind.TIMEDOUT
                self._drop(c, ns, name, instance, kind, now)

    def lookup(self, ns: str, name: str) -> list[_Row]:
        now = self.now()
        with self._read() as c:
            rows = c.execute(LOOKUP_SQL, (ns, name)).fetchall()
        return self._liveOnly(ns, rows, now)

    def find(self, ns: str, glob: Glob) -> list[_Row]:
        now = self.now()
        with self._read() as c:
            rows = self._matching(c, ns, glob)
        return self._liveOnly(ns, rows, now)

    def snapshot(
        self, ns: str, glob: Glob, known: Sequence[str], watched: Sequence[str]
    ) -> tuple[int, list[_Row], list[tuple[str, Any]]]:
        """
        The live matching rows, what became of C{known}, and the event id
        they reflect; events up to that id are delivered first.
        """
        now = self.now()
        with self._read() as c:
            seq = self._poll(c, watched)
            rows = self._matching(c, ns, glob)
            gone = []
            for instance in known:
                row = c.execute(
                    "SELECT kind FROM masse_gone WHERE namespace = ? AND instance = ?",
                    (ns, instance),
                ).fetchone()
                if row is not None:
                    gone.append((instance, row[0]))
        return seq, self._liveOnly(ns, rows, now), gone

    def stored(
        self, ns: str, keys: Sequence[tuple[str, str]]
    ) -> tuple[list[_Row], list[tuple[str, Any]]]:
        """
        The live rows under C{keys} (name, instance), timing out the expired
        ones, and the tombstones of the instances that are gone.
        """
        now = self.now()
        with self._read() as c:
            rows = []
            for name, instance in keys:
                row = c.execute(_ONE_SQL, (ns, name, instance)).fetchone()
                if row is not None:
                    rows.append((name, instance, row[0], row[1]))
        live = self._liveOnly(ns, rows, now)
        held = {(name, instance) for name, instance, _, _ in live}
        gone = []
        with self._read() as c:
            for name, instance in keys:
                if (name, instance) in held:
                    continue
                row = c.execute(
                    "SELECT kind FROM masse_gone WHERE namespace = ? AND instance = ?",
                    (ns, instance),
                ).fetchone()
                if row is not None:
                    gone.append((instance, row[0]))
        return live, gone

    def poll(self, watched: Sequence[str]) -> None:
        with self._read() as c:
            self._poll(c, watched)

    def sweep(self, ns: str) -> tuple[float | None, int]:
        """
        Time out the expired leases of C{ns}, prune now and then; return the
        seconds until the next expiry (if any) and how many were due.
        """
        now = self.now()
        with self._read() as c:
            due = c.execute(DUE_SQL, (ns, now, SWEEP_BATCH)).fetchall()
            due += c.execute(_BAD_EXPIRY_SQL, (ns, SWEEP_BATCH)).fetchall()
        if due:
            self._expire(ns, due)
        if time.monotonic() - self._lastPrune >= self.pruneInterval:
            self.prune()
        with self._read() as c:
            first = c.execute(_NEXT_SQL, (ns,)).fetchone()[0]
        return (max(0.0, first - self.now()) if _number(first) else None), len(due)

    def prune(self) -> None:
        """
        Delete old events and tombstones; remember up to which event id, so
        a watcher that had not read them yet knows to catch up.
        """
        self._lastPrune = time.monotonic()
        now = self.now()
        cutoff = now - self.keepSeconds
        with self._write() as c:
            boundary = self._seq(c) - self.keepEvents
            old = c.execute("SELECT MAX(id) FROM masse_events WHERE at < ?", (cutoff,)).fetchone()
            if isinstance(old[0], int):
                boundary = max(boundary, old[0])
            if boundary > self._pruned(c):
                c.execute("DELETE FROM masse_events WHERE id <= ?", (boundary,))
                c.execute(
                    "INSERT OR REPLACE INTO masse_meta (key, value) VALUES ('pruned', ?)",
                    (boundary,),
                )
            c.execute("DELETE FROM masse_gone WHERE at < ?", (cutoff,))
            c.execute(_CAP_GONE_SQL, (self.keepGone,))

    # Helpers, inside a transaction

    def _matching(self, c: sqlite3.Connection, ns: str, glob: Glob) -> list[Any]:
        """
        Rows whose name matches C{glob}, reading only the names under its
        literal prefix (names are ASCII below '\\x7f').
        """
        if glob.prefix:
            rows = c.execute(FIND_SQL, (ns, glob.prefix, glob.prefix + "\x7f")).fetchall()
        else:
            rows = c.execute(_FIND_ALL_SQL, (ns,)).fetchall()
        return [row for row in rows if isinstance(row[0], str) and glob.matches(row[0])]

    def _liveOnly(self, ns: str, rows: list[Any], now: float) -> list[_Row]:
        """
        The rows still alive at C{now}; the others are timed out (by us, if
        no other process did it first).
        """
        live = [
            (name, inst, data, expires - now)
            for name, inst, data, expires in rows
            if _live(expires, now)
        ]
        dead = [(name, inst) for name, inst, _, expires in rows if not _live(expires, now)]
        if dead:
            try:
                self._expire(ns, dead)
            except sqlite3.OperationalError:
                pass  # busy: the next sweep will do it
        return live

    def _expire(self, ns: str, keys: Sequence[tuple[Any, Any]]) -> None:
        now = self.now()
        with self._write() as c:
            for name, instance in keys:
                row = c.execute(_ONE_SQL, (ns, name, instance)).fetchone()
                if row is not None and not _live(row[1], now):
                    self._drop(c, ns, name, instance, EventKind.TIMEDOUT, now)

    def _seq(self, c: sqlite3.Connection) -> int:
        row = c.execute(_SEQ_SQL).fetchone()
        return row[0] if row is not None and isinstance(row[0], int) else 0

    def _pruned(self, c: sqlite3.Connection) -> int:
        row = c.execute("SELECT value FROM masse_meta WHERE key = 'pruned'").fetchone()
        return row[0] if row is not None and isinstance(row[0], int) else 0

    def _poll(self, c: sqlite3.Connection, watched: Sequence[str]) -> int:
        """
        Deliver the events of the C{watched} namespaces since the last
        poll; return the id of the newest event.
        """
        current = self._seq(c)
        cursor, self._cursor = self._cursor, current
        if cursor is None or current == cursor:
            return current
        gap = current < cursor or self._pruned(c) > cursor
        events: list[_Event] = []
        if watched:
            marks = ", ".join("?" * len(watched))
            events = c.execute(
                "SELECT id, namespace, kind, record FROM masse_events"
                f" WHERE id > ? AND id <= ? AND namespace IN ({marks}) ORDER BY id",
                (cursor, current, *watched),
            ).fetchall()
        if events or gap:
            self.deliver(events, gap)
        return current


@implementer(IRegistry)
class SQLiteRegistry(SharedStoreRegistry):
    """
    A registry kept in one SQLite database file, closed when the reactor
    shuts down if not before.

    @param reactor: runs the registry's thread and, unless C{clock} is
        given, its timers.
    @param path: the database file; created if missing.
    @param url: the registry's URL, for messages.
    @param timeout: deadline of every call, in seconds; a lock held by
        another process longer than that fails the call.
    @param poll: seconds between two reads of new events while watching.
    @param grace: seconds a watcher waits for an instance that vanished
        without a trace to come back (see L{Subscription}).
    @param clock: the timers (heartbeats, polls, sweeps), if not C{reactor}.
    @param now: the wall clock that lease expiry times are written in,
        shared by every process using the file.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        path: str,
        url: str | None = None,
        timeout: float = 2.0,
        poll: float = DEFAULT_POLL,
        grace: float = 3.0,
        clock: IReactorTime | None = None,
        now: Callable[[], float] = time.time,
    ):
        super().__init__(clock or reactor, grace)
        self.path = os.path.abspath(path)
        self.url = url or "sqlite://" + quote(self.path)
        self._reactor = reactor
        self._threads = IReactorFromThreads(reactor)
        self._timeout = self.callTimeout = timeout
        self._pollInterval = poll
        self._db = _Database(self.path, now)
        self._db.deliver = self._fromThread
        self._pool = ThreadPool(1, 1, name=f"txmasse-sqlite {self.path}")
        self._pool.threadFactory = _daemonThread  # type: ignore[assignment]
        self._pool.start()
        self._pollCall: IDelayedCall | None = None
        self._polling = False
        self._pollAgain = False
        self._pollFailing = False
        self._shutdownTrigger: Any = None
        if IReactorCore.providedBy(reactor):
            self._shutdownTrigger = IReactorCore(reactor).addSystemEventTrigger(
                "during", "shutdown", self._shutdown
            )

    @classmethod
    def fromURL(cls, reactor: Any, parsed: RegistryURL) -> SQLiteRegistry:
        """
        The registry in the file C{parsed} names (C{sqlite:///path.db}).
        """
        return cls(
            reactor,
            parsed.path,
            url=parsed.display,
            timeout=parsed.timeout,
            poll=DEFAULT_POLL if parsed.poll is None else parsed.poll,
        )

    def __repr__(self) -> str:
        return f"<SQLiteRegistry {self.url}>"

    # Calls on the registry's thread, with a deadline

    def _call(self, what: str, job: Callable[..., T], *args: Any) -> Deferred[T]:
        if self.closed:
            return fail(RegistryUnavailable(f"registry {self.url} is closed"))
        deadline = time.monotonic() + self._timeout
        d = deferToThreadPool(self._threads, self._pool, self._db.run, deadline, job, *args)
        d.addTimeout(self._timeout, self._clock)
        return d.addErrback(self._unavailable, what)

    def _unavailable(self, failure: Failure, what: str) -> Failure:
        if failure.check(DeferredTimeout, _Late):
            reason = f"no answer within {self._timeout:g}s"
        elif failure.check(sqlite3.Error, DatabaseRefused, OSError):
            reason = failure.getErrorMessage()
            if "locked" in reason:
                reason += f" (held by another connection; deadline {self._timeout:g}s)"
        else:
            return failure
        return Failure(RegistryUnavailable(f"registry {self.url}: {what} failed: {reason}"))

    # SharedStoreRegistry

    def _fetchLookup(self, namespace: str, name: str) -> Deferred[list[PeerRecord]]:
        d = self._call(f"lookup of {name!r}", self._db.lookup, namespace, name)
        return d.addCallback(self._records, namespace)

    def _fetchFind(self, namespace: str, glob: Glob) -> Deferred[list[PeerRecord]]:
        d = self._call(f"find of {glob.pattern!r}", self._db.find, namespace, glob)
        return d.addCallback(self._records, namespace)

    def _fetchLeases(self, namespace: str, glob: Glob) -> Deferred[list[LeaseStatus]]:
        d = self._call(f"listing of {glob.pattern!r}", self._db.find, namespace, glob)
        return d.addCallback(self._statuses, namespace)

    def _listen(self, namespace: str) -> Deferred[None]:
        if self._pollFailing:
            self._eventsInterrupted()  # the new watch too is not current until polls work
        self._schedulePoll()
        return succeed(None)

    def _publishUsage(self, event: PeerEvent) -> Deferred[None]:
        record = event.record
        d = self._call(
            f"report of {event.kind} to {record.name!r}",
            self._db.usage,
            record.namespace,
            str(event.kind),
            event.source,
            record.toJSON().decode("ascii"),
        )
        return d.addCallback(self._wrote)

    def _disconnect(self) -> Deferred[None]:
        if self._pollCall is not None and self._pollCall.active():
            self._pollCall.cancel()
        if self._shutdownTrigger is not None:
            IReactorCore(self._reactor).removeSystemEventTrigger(self._shutdownTrigger)
            self._shutdownTrigger = None
        d = deferToThreadPool(self._threads, self._pool, self._db.close)

        def stopped(result: object) -> None:
            # The thread is idle now, so this join is immediate.
            if self._pool.started:  # not already stopped by _shutdown
                self._pool.stop()
            if isinstance(result, Failure):
                log.warn("registry {url}: closing: {error}", url=self.url, error=result.value)

        return d.addBoth(stopped)

    def _sweepOnce(self, namespace: str) -> Deferred[float | None]:
        def swept(result: tuple[float | None, int]) -> float | None:
            untilNext, due = result
            if due:
                self._wrote(None)
            return untilNext

        return self._call("sweep", self._db.sweep, namespace).addCallback(swept)

    def _shutdown(self) -> None:
        """
        Close as the reactor stops, once every "before shutdown" trigger
        has finished: services have released their names by then, after
        draining them if they drain (a close one turn into shutdown came
        before a drained name's release). The reactor runs no more
        callbacks now, so this waits here, as Twisted's own thread pool
        does, for the thread to finish what is queued, the file's close
        last.
        """
        self._shutdownTrigger = None
        self.close()
        if self._pool.started:
            self._pool.callInThread(self._db.close)  # what close() queues only once taken back
            self._pool.stop()

    # The store, as leases and subscriptions use it

    def putRecord(self, record: PeerRecord, ttl: float) -> Deferred[None]:
        d = self._call(
            f"registration of {record.name!r}",
            self._db.put,
            record.namespace,
            record.name,
            record.instance,
            freshness.stored(record).decode("ascii"),
            ttl,
        )
        return d.addCallback(self._wrote)

    def removeRecord(self, record: PeerRecord) -> Deferred[None]:
        d = self._call(
            f"release of {record.name!r}",
            self._db.remove,
            record.namespace,
            record.name,
            record.instance,
        )
        return d.addCallback(self._wrote)

    def snapshot(self, namespace: str, glob: Glob, known: Sequence[str]) -> Deferred[Snapshot]:
        d = self._call(
            f"find of {glob.pattern!r}",
            self._db.snapshot,
            namespace,
            glob,
            list(known),
            list(self._watchers),
        )

        def parsed(result: tuple[int, list[_Row], list[tuple[str, Any]]]) -> Snapshot:
            seq, rows, tombstones = result
            gone = {
                instance: EventKind(kind)
                for instance, kind in tombstones
                if kind in (EventKind.LEFT, EventKind.TIMEDOUT)
            }
            return Snapshot(seq, self._records(rows, namespace), gone)

        return d.addCallback(parsed)

    def storedRecords(self, namespace: str, keys: Sequence[Key]) -> Deferred[Stored]:
        d = self._call("check of events", self._db.stored, namespace, list(keys))

        def parsed(result: tuple[list[_Row], list[tuple[str, Any]]]) -> Stored:
            rows, tombstones = result
            records = {(r.name, r.instance): r for r in self._records(rows, namespace)}
            gone = {
                instance: EventKind(kind)
                for instance, kind in tombstones
                if kind in (EventKind.LEFT, EventKind.TIMEDOUT)
            }
            return Stored(records, gone)

        return d.addCallback(parsed)

    def _wrote(self, _: None) -> None:
        """
        After a write of ours, show it to our own watchers without waiting.
        """
        if self._watchers:
            self._schedulePoll(now=True)

    def _records(self, rows: Sequence[_Row], namespace: str) -> list[PeerRecord]:
        return [status.record for status in self._statuses(rows, namespace)]

    def _statuses(self, rows: Sequence[_Row], namespace: str) -> list[LeaseStatus]:
        """
        Parse records from the store, skipping (and logging) garbage and
        records that claim another place than where they sit.
        """
        statuses = []
        for name, instance, data, left in rows:
            record = self._stored(data, namespace, name=name, instance=instance)
            if record is None:
                continue
            statuses.append(LeaseStatus(record, left))
        return statuses

    # Events: polled from the file

    def _fromThread(self, events: list[_Event], gap: bool) -> None:
        """
        Hand events read on the registry's thread to the reactor, ahead of
        the result of the call that read them.
        """
        self._threads.callFromThread(self._dispatch, events, gap)

    def _dispatch(self, events: list[_Event], gap: bool) -> None:
        for seq, namespace, kind, data in events:
            if namespace not in self._watchers:
                continue
            if kind in USAGE_KINDS:
                source, _, recordData = str(data).partition(" ")
                self._usageReceived(namespace, kind, source, recordData)
                continue
            self._eventReceived(namespace, seq, kind, data)
        if gap:
            log.info("registry {url}: events were pruned before we read them", url=self.url)
            for subscription in self._subscriptions():
                if not subscription.initial:
                    subscription.resync()

    def _schedulePoll(self, now: bool = False) -> None:
        if self.closed or not self._watchers:
            return
        if self._polling:
            self._pollAgain = self._pollAgain or now
            return
        if self._pollCall is not None and self._pollCall.active():
            if not now:
                return
            self._pollCall.cancel()
        delay = 0.0 if now else self._pollInterval
        self._pollCall = self._clock.callLater(delay, self._pollNow)

    def _pollNow(self) -> None:
        self._pollCall = None
        if self.closed or not self._watchers:
            return
        self._polling = True
        d = self._call("poll for events", self._db.poll, list(self._watchers))
        d.addCallbacks(self._polled, self._pollFailed)

    def _polled(self, _: object) -> None:
        if self._pollFailing:
            log.info("registry {url}: reading events works again", url=self.url)
            for subscription in self._subscriptions():
                subscription.resumed()
        self._pollFailing = False
        self._pollDone()

    def _pollFailed(self, failure: Failure) -> None:
        if not self._pollFailing:
            log.warn(
                "registry {url}: cannot read events, retrying: {error}",
                url=self.url,
                error=failure.getErrorMessage(),
            )
            self._eventsInterrupted()
        self._pollFailing = True
        self._pollDone()

    def _pollDone(self) -> None:
        self._polling = False
        again, self._pollAgain = self._pollAgain, False
        self._schedulePoll(now=again)
