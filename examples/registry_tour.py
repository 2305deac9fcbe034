"""
A tour of the registry: two peers register, a watcher sees one leave and the
other time out.

Run it with the in-process registry, or against a Redis:

    python examples/registry_tour.py memory://
    python examples/registry_tour.py redis://127.0.0.1:6379/0

It prints each event the watcher receives and exits.
"""

import sys

from twisted.internet import task
from twisted.internet.defer import Deferred

from txmasse import PeerEvent, PeerRecord, registryFromURL


async def tour(reactor: object, url: str) -> None:
    registry = registryFromURL(reactor, url)  # type: ignore[arg-type]
    seen: list[str] = []
    bothJoined: Deferred[None] = Deferred()
    done: Deferred[None] = Deferred()

    def show(event: PeerEvent) -> None:
        record = event.record
        print(f"{event.kind:>8}  {record.namespace}/{record.name}  {record.endpoints[0]}")
        seen.append(event.kind)
        if seen.count("joined") == 2 and not bothJoined.called:
            bothJoined.callback(None)
        if event.kind == "timedout":
            done.callback(None)

    watcher = await registry.watch("tour", "db-*", show)
    one = await registry.register(PeerRecord("tour", "db-1", ["tcp:host=10.0.0.7:port=4312"]), 1)
    two = await registry.register(PeerRecord("tour", "db-2", ["tcp:host=10.0.0.8:port=4312"]), 1)
    await bothJoined  # events travel apart from calls: wait to see them
    found = await registry.lookup("tour", "db-1")
    print(f"  lookup  tour/db-1 -> {found[0].endpoints}")
    await one.release()
    two.stop()  # as if db-2's process died
    await done
    watcher.stop()
    await registry.close()


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else "memory://"
    task.react(lambda reactor: Deferred.fromCoroutine(tour(reactor, url)))
