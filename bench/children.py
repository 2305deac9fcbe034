"""
Helper processes (C{python -m bench.peer ...}) that the bench drives over
their standard input and output, one line at a time.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

REPO = Path(__file__).resolve().parent.parent


class Child(ProcessProtocol):
    """
    A running helper: C{line()} reads its next output line, C{send} writes one.
    """

    def __init__(self, what: str):
        self.what = what
        self.ended: Deferred[None] = Deferred()
        self.killedAt: float | None = None
        self._lines: DeferredQueue[str] = DeferredQueue()
        self._buffer = b""

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._lines.put(line.decode())

    def errReceived(self, data: bytes) -> None:
        sys.stderr.write(f"[{self.what}] {data.decode(errors='replace')}")

    def processEnded(self, reason: Failure) -> None:
        self._lines.put("")  # wakes a reader: the process is gone
        self.ended.callback(None)

    async def line(self, timeout: float = 60.0) -> str:
        d = self._lines.get()
        d.addTimeout(timeout, reactor)
        text: str = await d
        if text == "" and self.ended.called:
            raise RuntimeError(f"bench: helper {self.what} ended unexpectedly")
        return text

    async def expect(self, word: str, timeout: float = 60.0) -> list[str]:
        """
        Wait for a line starting with C{word}; return its other words.
        """
        text = await self.line(timeout)
        first, *rest = text.split()
        if first != word:
            raise RuntimeError(f"bench: helper {self.what} said {text!r}, expected {word!r}")
        return rest

    def send(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(text.encode() + b"\n")

    def kill(self) -> None:
        """
        SIGKILL, noting when (C{time.monotonic}).
        """
        if not self.ended.called:
            self.killedAt = time.monotonic()
            assert self.transport is not None
            self.transport.signalProcess("KILL")

    async def stop(self) -> None:
        self.kill()
        await self.ended


def spawn(*args: str, module: str = "bench.peer") -> Child:
    """
    Start C{python -m MODULE ARGS...}.
    """
    child = Child(" ".join([module, *args[:1]]))
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    reactor.spawnProcess(
        child,
        sys.executable,
        [sys.executable, "-m", module, *args],
        env=env,
        path=str(REPO),
    )
    return child
