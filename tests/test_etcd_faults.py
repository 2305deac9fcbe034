"""
The etcd registry on a three-member cluster on loopback, through faults:
the leader killed under live leases and a watcher, the whole cluster
restarted, a peer process killed, a member paused.

One cluster serves the module; each test leaves every member running.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.etcd_helpers import EtcdCluster, EtcdMember
from tests.helpers import eventually, newRegistry, sleep
from txmasse import PeerEvent, PeerRecord
from txmasse.registry.etcd import EtcdRegistry

ROOT = Path(__file__).resolve().parent.parent
_prefixes = iter(range(1, 1_000_000))


class Events(list[PeerEvent]):
    def __call__(self, event: PeerEvent) -> None:
        self.append(event)

    def kinds(self) -> list[tuple[str, str]]:
        return [(e.kind, e.record.name) for e in self]


def record(name: str) -> PeerRecord:
    return PeerRecord("dev", name, ["tcp:host=127.0.0.1:port=4000"])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-cluster"), size=3)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def registries(cluster: EtcdCluster) -> Iterator[Callable[..., EtcdRegistry]]:
    """
    Registries on the cluster under one prefix of this test's own, each
    listing the members in the order given (the first is tried first).
    """
    prefix = f"fault{next(_prefixes)}"
    made: list[EtcdRegistry] = []

    def make(first: EtcdMember | None = None, timeout: float = 2) -> EtcdRegistry:
        members = sorted(cluster.members, key=lambda m: m is not first)
        url = "etcd://" + ",".join(m.address for m in members) + f"/{prefix}?timeout={timeout}"
        registry = newRegistry(url)
        made.append(registry)
        return registry  # type: ignore[no-any-return]

    yield make
    for registry in made:
        pytest_twisted.blockon(registry.close())
    cluster.start()  # whatever a test killed runs again
    cluster.waitHealthy()


def follower(cluster: EtcdCluster) -> EtcdMember:
    leader = cluster.leader()
    return next(m for m in cluster.members if m is not leader)


async def assertViewIsStore(subscription: Any, registry: EtcdRegistry) -> None:
    await eventually(lambda: subscription.synced)
    stored = await registry.find("dev", "*")
    assert sorted(r.instance for r in subscription.peers) == sorted(r.instance for r in stored)


@pytest_twisted.ensureDeferred
async def test_leader_killed_under_live_leases_and_a_watcher(
    cluster: EtcdCluster, registries: Callable[..., EtcdRegistry]
) -> None:
    leader = cluster.leader()
    watcher = registries(first=leader)  # its watch stream is on the leader
    peer = registries(first=follower(cluster))
    events = Events()
    subscription = await watcher.watch("dev", "*", events)
    ttl = 2.0
    leases = [await peer.register(record(f"svc-{i}"), ttl) for i in range(20)]
    await eventually(lambda: len(events) == 20)

    killed = time.monotonic()
    leader.kill()  # changes during the election, while the watcher's stream is lost
    for lease in leases[:5]:
        await lease.release()
    late = [await peer.register(record(f"late-{i}"), ttl) for i in range(5)]
    written = time.monotonic() - killed
    await eventually(lambda: len(events) == 30)
    print(
        f"etcd leader killed: 5 releases + 5 registrations done {written:.3f}s later, "
        f"watcher caught up {time.monotonic() - killed:.3f}s later"
    )
    assert cluster.leaderNow() not in (None, leader)
    await sleep(ttl + 1)  # a lease whose heartbeats were lost would have expired by now

    found = await peer.find("dev", "*")
    assert sorted(r.name for r in found) == sorted(
        [lease.record.name for lease in leases[5:] + late]
    )
    assert sorted(events.kinds()) == sorted(
        [("joined", f"svc-{i}") for i in range(20)]
        + [("left", f"svc-{i}") for i in range(5)]
        + [("joined", f"late-{i}") for i in range(5)]
    )
    await assertViewIsStore(subscription, peer)


@pytest_twisted.ensureDeferred
async def test_whole_cluster_restarted(
    cluster: EtcdCluster, registries: Callable[..., EtcdRegistry]
) -> None:
    watcher, peer = registries(), registries()
    events = Events()
    subscription = await watcher.watch("dev", "*", events)
    for i in range(5):
        await peer.register(record(f"svc-{i}"), 2)
    await eventually(lambda: len(events) == 5)

    cluster.stop()
    await sleep(0.5)  # the heartbeats fail meanwhile
    cluster.start()
    await eventually(lambda: subscription.synced, timeout=10)
    await peer.register(record("after"), 2)
    await eventually(lambda: len(events) == 6, timeout=10)
    await sleep(3)  # leases lost in the restart would have expired by now
    assert sorted(r.name for r in await peer.find("dev", "*")) == sorted(
        [f"svc-{i}" for i in range(5)] + ["after"]
    )
    assert events.kinds()[5:] == [("joined", "after")]
    await assertViewIsStore(subscription, peer)


@pytest_twisted.ensureDeferred
async def test_killed_peer_process_times_out_within_ttl_and_a_second(
    cluster: EtcdCluster, registries: Callable[..., EtcdRegistry]
) -> None:
    watcher = registries()
    events = Events()
    await watcher.watch("dev", "victim", events)
    ttl = 1.0
    url = watcher.url  # no password in it
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.peer_process", url, "dev", "victim", str(ttl)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith(b"registered")
        await eventually(lambda: events.kinds() == [("joined", "victim")])
    finally:
        process.kill()
        process.wait()
    killed = time.monotonic()
    await eventually(lambda: len(events) == 2, timeout=ttl + 1)
    print(f"etcd: timedout {time.monotonic() - killed:.3f}s after SIGKILL (ttl {ttl}s)")
    await sleep(0.3)
    assert events.kinds() == [("joined", "victim"), ("timedout", "victim")]
    assert await watcher.lookup("dev", "victim") == []


@pytest_twisted.ensureDeferred
async def test_paused_member(cluster: EtcdCluster, registries: Callable[..., EtcdRegistry]) -> None:
    """
    A member that stops answering (SIGSTOP) is passed over: calls go to
    the others within their deadline, the watch moves, no lease is lost.
    """
    paused = follower(cluster)
    watcher, peer = registries(first=paused, timeout=1), registries(first=paused, timeout=1)
    events = Events()
    subscription = await watcher.watch("dev", "*", events)
    lease = await peer.register(record("before"), 2)
    await eventually(lambda: len(events) == 1)
    paused.pause()
    try:
        assert await peer.lookup("dev", "before") == [lease.record]
        await peer.register(record("during"), 2)
        await eventually(lambda: len(events) == 2)
        await sleep(2.5)  # longer than the ttl: the heartbeats found another member
        assert len(await peer.lookup("dev", "before")) == 1
    finally:
        paused.resume()
    assert events.kinds() == [("joined", "before"), ("joined", "during")]
    await assertViewIsStore(subscription, peer)


@pytest_twisted.ensureDeferred
async def test_history_compacted_while_the_watcher_was_away(
    cluster: EtcdCluster, registries: Callable[..., EtcdRegistry]
) -> None:
    """
    The watcher's only member is down while records come and go and etcd
    compacts the revisions its watch would resume from: it starts again
    from a snapshot, and hears each change once, left told from timedout.
    """
    away = follower(cluster)
    peer = registries(first=next(m for m in cluster.members if m is not away))
    prefix = peer.url.rpartition("/")[2].partition("?")[0]
    watcher = newRegistry(f"etcd://{away.address}/{prefix}?timeout=1")
    try:
        events = Events()
        subscription = await watcher.watch("dev", "*", events)
        released = await peer.register(record("released"), 30)
        crashed = await peer.register(record("crashed"), 1)
        await peer.register(record("stays"), 30)
        await eventually(lambda: len(events) == 3)
        away.kill()
        await eventually(lambda: not subscription.synced)
        await released.release()
        crashed.stop()
        await peer.register(record("new"), 30)
        await eventually(lambda: not cluster.keys(f"{prefix}/dev/r/crashed/"))
        cluster.call("/v3/kv/compaction", {"revision": str(cluster.revision())})
        away.start()
        await eventually(lambda: subscription.synced and len(events) == 6, timeout=10)
        assert sorted(events.kinds()[3:]) == [
            ("joined", "new"),
            ("left", "released"),
            ("timedout", "crashed"),
        ]
        await assertViewIsStore(subscription, peer)
    finally:
        await watcher.close()
