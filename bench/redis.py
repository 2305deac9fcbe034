"""
A private redis-server on a free loopback port, and blocking one-off
commands to it: the bench never touches a Redis it did not start.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _encode(*args: object) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read(f: Any) -> Any:
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read(f) for _ in range(n)]
    raise RuntimeError(f"bad reply from redis-server: {line!r}")


def answersPing(
    process: subprocess.Popen[bytes], command: Callable[..., Any], timeout: float = 10
) -> bool:
    """
    Whether a redis-server just started as C{process} answers C{PING}
    (through C{command}) within C{timeout} seconds, before it exits.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if command("PING") == "PONG":
                return True
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.02)


class RedisProcess:
    """
    A redis-server of the bench's own: no persistence, loopback only.
    """

    def __init__(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise SystemExit(
                "bench: redis-server is not installed (apt-get install -y redis-server)"
            )
        self.executable = executable
        self.port = freePort()
        self.directory = tempfile.TemporaryDirectory(prefix="txmasse-bench-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.executable,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self.directory.name,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if not answersPing(self.process, self.command):
            raise SystemExit(f"bench: redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None
        self.directory.cleanup()

    def command(self, *args: object) -> Any:
        """
        Run one command on a connection of its own (blocking: setup and
        counters only, never inside a timed section).
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            with s.makefile("rb") as f:
                s.sendall(_encode(*args))
                return _read(f)

    def info(self, section: str) -> dict[str, str]:
        text = self.command("INFO", section).decode()
        pairs = (line.partition(":") for line in text.splitlines() if ":" in line)
        return {key: value for key, _, value in pairs}

    def commandCalls(self) -> dict[str, int]:
        """
        Calls per command so far, including those made inside scripts.
        """
        calls = {}
        for key, stats in self.info("commandstats").items():
            if key.startswith("cmdstat_"):
                calls[key[len("cmdstat_") :]] = int(stats.split(",")[0].split("=")[1])
        return calls

    def cpuSeconds(self) -> float:
        cpu = self.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def version(self) -> str:
        return self.info("server").get("redis_version", "?")
