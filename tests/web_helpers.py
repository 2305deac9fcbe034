"""
Processes for the dashboard tests: C{masse web} itself, peers registered by
C{masse register}, and a reader of its event stream over a plain socket.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent.parent


def masseProcess(registry: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASSE_REGISTRY": registry}
    env.pop("MASSE_NAMESPACE", None)
    return subprocess.Popen(
        [sys.executable, "-m", "txmasse", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd="/",
    )


def firstLine(process: subprocess.Popen[str], timeout: float = 20.0) -> str:
    """
    The first line C{process} prints, waited for at most C{timeout} seconds.
    """
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([process.stdout], [], [], 0.05)[0]:
            line = process.stdout.readline()
            if line:
                return line
        if process.poll() is not None:
            break
    stop(process)
    assert process.stderr is not None
    raise AssertionError(f"{process.args!r} printed nothing; stderr: {process.stderr.read()!r}")


def stop(process: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        process.send_signal(sig)
    process.wait(10)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


class Dashboard:
    """
    C{masse web} on a free loopback port.
    """

    def __init__(self, registry: str, *namespaces: str, refresh: float = 0.2):
        self.process = masseProcess(
            registry,
            "web",
            *namespaces,
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--refresh",
            str(refresh),
        )
        line = firstLine(self.process)
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert found is not None, line
        self.port = int(found.group(1))
        self.url = found.group(0)

    def get(self, path: str, host: str | None = None) -> tuple[int, str, bytes]:
        """
        Status, content type and body of a GET.
        """
        request = urllib.request.Request(self.url + path.lstrip("/"))
        if host is not None:
            request.add_header("Host", host)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers["Content-Type"], response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], e.read()

    def json(self, path: str) -> Any:
        status, _, body = self.get(path)
        assert status == 200, (status, body)
        return json.loads(body)

    def stop(self) -> None:
        stop(self.process, signal.SIGTERM)


class Peer:
    """
    A name kept registered by C{masse register} in a process of its own.
    """

    def __init__(
        self,
        registry: str,
        namespace: str,
        name: str,
        port: int,
        ttl: float = 1.0,
        meta: dict[str, str] | None = None,
    ):
        args = ["--ns", namespace, "register", name, "--ttl", str(ttl)]
        args += ["--endpoint", f"tcp:host=127.0.0.1:port={port}"]
        for key, value in (meta or {}).items():
            args += ["--meta", f"{key}={value}"]
        self.process = masseProcess(registry, *args)
        line = firstLine(self.process)
        found = re.search(r"instance ([0-9a-f]{32})", line)
        assert found is not None, line
        self.instance = found.group(1)

    def kill(self) -> None:
        stop(self.process)


class EventStream:
    """
    C{/api/events} read over a plain socket: its messages, as they come.
    """

    def __init__(self, port: int, query: str = ""):
        self._socket = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._socket.sendall(
            f"GET /api/events{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        self._buffer = b""
        head = self._until(b"\r\n\r\n", 10)
        self.status = int(head.split(b" ", 2)[1])
        self.headers = head.decode("latin-1").lower()
        assert "transfer-encoding: chunked" in self.headers, self.headers
        self._text = ""

    def _until(self, marker: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._socket], [], [], left)[0]:
                raise AssertionError(f"nothing more on the event stream; so far {self._text!r}")
            data = self._socket.recv(65536)
            if not data:
                raise AssertionError("the event stream closed")
            self._buffer += data
        part, self._buffer = self._buffer.split(marker, 1)
        return part

    def _chunk(self, timeout: float) -> str:
        size = int(self._until(b"\r\n", timeout), 16)
        deadline = time.monotonic() + timeout
        while len(self._buffer) < size + 2:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._socket], [], [], left)[0]:
                raise AssertionError("a chunk of the event stream never ended")
            self._buffer += self._socket.recv(65536)
        chunk, self._buffer = self._buffer[:size], self._buffer[size + 2 :]
        return chunk.decode()

    def next(self, timeout: float = 10.0) -> tuple[str, Any]:
        """
        The next message: its event name (C{message} for unnamed) and data;
        comments and C{retry:} lines are skipped.
        """
        while True:
            while "\n\n" not in self._text:
                self._text += self._chunk(timeout)
            block, self._text = self._text.split("\n\n", 1)
            event, data = "message", []
            for line in block.split("\n"):
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    event = value
                elif field == "data":
                    data.append(value)
            if data:
                return event, json.loads("\n".join(data))

    def nextPeerEvent(self, timeout: float = 10.0) -> dict[str, Any]:
        """
        The next unnamed message (a peer event), skipping lease updates.
        """
        deadline = time.monotonic() + timeout
        while True:
            event, data = self.next(max(0.01, deadline - time.monotonic()))
            if event == "message":
                message: dict[str, Any] = data
                return message

    def close(self) -> None:
        self._socket.close()


_REPORT = """
import sys
from twisted.internet import task
from twisted.internet.defer import Deferred
from txmasse import EventKind, PeerEvent, registryFromURL

async def main(reactor, url, namespace, name, kind):
    registry = registryFromURL(reactor, url)
    try:
        (record,) = await registry.lookup(namespace, name)
        await registry.report(PeerEvent(EventKind(kind), record, "tester:1"))
    finally:
        await registry.close()

task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, *sys.argv[1:])))
"""


def reportUsage(registry: str, namespace: str, name: str, kind: str) -> None:
    """
    Publish a C{connected} or C{disconnected} report about the one instance
    of C{name}, from a process of its own, as a C{report=true} client does.
    """
    subprocess.run(
        [sys.executable, "-c", _REPORT, registry, namespace, name, kind],
        check=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd="/",
    )
