"""
A process that registers one name and then does nothing, for tests that kill
it: python -m tests.peer_process URL NAMESPACE NAME TTL
"""

import sys

from twisted.internet import task
from twisted.internet.defer import Deferred

from txmasse.records import PeerRecord
from txmasse.registry import registryFromURL


async def main(reactor: object, url: str, namespace: str, name: str, ttl: str) -> None:
    registry = registryFromURL(reactor, url)  # type: ignore[arg-type]
    record = PeerRecord(namespace, name, ["tcp:host=127.0.0.1:port=9"])
    lease = await registry.register(record, float(ttl))
    print("registered", lease.record.instance, flush=True)
    await Deferred()


if __name__ == "__main__":
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, *sys.argv[1:])))
