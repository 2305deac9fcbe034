"""
For the RPC tests: AMP peers in processes of their own (C{tests/rpc_peer.py}
or C{twistd masse}), and the C{masse} command.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent


def masse(*args: str, registry: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASSE_REGISTRY": registry}
    env.pop("MASSE_NAMESPACE", None)
    return subprocess.run(
        [sys.executable, "-m", "txmasse", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd="/",
    )


class Peer:
    """
    One peer process; its output lines are read as they come (by a thread,
    so that waiting for one never blocks the reactor's tests).
    """

    def __init__(self, args: list[str], **extraEnv: str):
        env = {**os.environ, "PYTHONPATH": str(ROOT), **extraEnv}
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=str(ROOT),
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def saw(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def waitFor(self, text: str, timeout: float = 30) -> str:
        """
        The first output line with C{text}; fails if the peer exits first.
        """
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.process.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.1)  # the reading thread may still hold the last lines
                output = "".join(self.lines)[-3000:]
                raise AssertionError(f"peer never printed {text!r}:\n{output}")
            time.sleep(0.01)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


class Peers:
    """
    Peers started by a test, all killed at its end.
    """

    def __init__(self, registry: str):
        self.registry = registry
        self.started: list[Peer] = []

    def start(self, name: str, kind: str, namespace: str = "dev", wait: bool = True) -> Peer:
        """
        A C{tests/rpc_peer.py} peer; with C{wait}, once registered.
        """
        args = [sys.executable, "-m", "tests.rpc_peer", self.registry, namespace, name, kind]
        peer = Peer(args)
        self.started.append(peer)
        if wait:
            peer.waitFor("registered ")
        return peer

    def twistd(self, name: str, factory: str, namespace: str = "dev") -> Peer:
        """
        C{twistd masse} serving C{factory}, once it is listening under C{name}.
        """
        twistd = Path(sys.executable).parent / "twistd"
        peer = Peer(
            [
                str(twistd), "-n", "--pidfile=", "masse", "--name", name, "--ns", namespace,
                "--registry", self.registry, "--factory", factory,
            ]
        )  # fmt: skip
        self.started.append(peer)
        peer.waitFor(f"listening as {namespace}/{name}")
        return peer

    def example(self, *args: str) -> Peer:
        """
        C{python -m examples.rpc ARGS}, in namespace C{dev} of this registry.
        """
        peer = Peer(
            [sys.executable, "-m", "examples.rpc", *args],
            MASSE_REGISTRY=self.registry,
            MASSE_NAMESPACE="dev",
        )
        self.started.append(peer)
        return peer

    def killAll(self) -> None:
        for peer in self.started:
            peer.kill()
