"""
An HTTP peer for the health tests, in a process of its own:

    python -m tests.health_peer "masse:name=web:...:check=http\\:/health" STATUS_FILE

Serves C{/health} with the status code written in C{STATUS_FILE} (200 if
empty), so a test can make its health page fail and recover; prints
C{listening PORT} once registered; on SIGTERM stops listening and exits.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class Health(Resource):
    isLeaf = True

    def __init__(self, status: Path):
        super().__init__()
        self.status = status

    def render_GET(self, request: Request) -> bytes:
        text = self.status.read_text().strip()
        request.setResponseCode(int(text) if text else 200)
        return b"health\n"


def main(description: str, status: str) -> None:
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    theReactor: Any = reactor
    root = Resource()
    root.putChild(b"health", Health(Path(status)))

    def listening(port: IListeningPort) -> None:
        print(f"listening {port.getHost().port}", flush=True)  # type: ignore[attr-defined]
        theReactor.addSystemEventTrigger("before", "shutdown", port.stopListening)

    def failed(failure: Failure) -> None:
        print(f"failed: {failure.getErrorMessage()}", file=sys.stderr, flush=True)
        theReactor.stop()

    endpoint = serverFromString(reactor, description)
    endpoint.listen(Site(root)).addCallbacks(listening, failed)
    theReactor.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
