"""
Helpers for the DNS tests: C{masse dns} and C{masse register} as real
processes, C{dig}, and queries through C{twisted.names.client}.
"""

from __future__ import annotations

import shutil
import sys
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.names import client, dns
from twisted.python.failure import Failure

from tests.endpoint_helpers import REPO, ChildProcess, peerEnvironment

DIG_HINT = (
    "dig is not installed: the DNS tests need it. Install it with "
    "'apt-get install -y bind9-dnsutils' (tests/run.sh does this)."
)


class LineProcess(ChildProcess):
    """
    A child whose first line starting with C{word} fires C{ready} with
    that line's words (and fails if it exits first).
    """

    def __init__(self, word: bytes):
        super().__init__()
        self.word = word
        self.ready: Deferred[list[str]] = Deferred()

    def outReceived(self, data: bytes) -> None:
        super().outReceived(data)
        for line in self.output.splitlines():
            if line.startswith(self.word) and not self.ready.called:
                self.ready.callback(line.decode().split())

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(
                RuntimeError(f"exited before {self.word!r}:\n{self.output.decode()[-3000:]}")
            )
        super().processEnded(reason)


def spawnMasse(url: str, word: bytes, *args: str, namespace: str = "default") -> LineProcess:
    """
    C{python -m txmasse ARGS} with C{url} as the registry.
    """
    process = LineProcess(word)
    env = peerEnvironment(url)
    env["MASSE_NAMESPACE"] = namespace
    argv = [sys.executable, "-m", "txmasse", *args]
    reactor.spawnProcess(process, sys.executable, argv, env=env, path=str(REPO))
    process.ready.addTimeout(30, reactor)
    return process


async def startDNS(url: str, *args: str) -> tuple[LineProcess, int]:
    """
    C{masse dns --listen 0 ARGS}: the process and the port it answers on.
    """
    process = spawnMasse(url, b"masse dns: answering", "dns", "--listen", "0", *args)
    words = await process.ready
    return process, int(words[words.index("port") + 1])


async def register(
    url: str, namespace: str, name: str, *endpoints: str, ttl: str = "10", meta: str = ""
) -> tuple[LineProcess, str]:
    """
    C{masse register}: the process and the instance id it registered.
    """
    args = ["register", name, "--ttl", ttl]
    for endpoint in endpoints:
        args += ["--endpoint", endpoint]
    if meta:
        args += ["--meta", meta]
    process = spawnMasse(url, b"registered", *args, namespace=namespace)
    words = await process.ready
    return process, words[words.index("instance") + 1]


async def dig(port: int, *args: str) -> str:
    """
    C{dig @127.0.0.1 -p PORT ARGS}'s output (it must exit 0).
    """
    executable = shutil.which("dig")
    if executable is None:
        pytest.fail(DIG_HINT, pytrace=False)
    argv = ["@127.0.0.1", "-p", str(port), "+time=2", "+tries=2", *args]
    out, err, code = await getProcessOutputAndValue(executable, argv, env={})
    assert code == 0, (out + err).decode()
    return out.decode()  # type: ignore[no-any-return]


async def ask(
    port: int, name: str, type: int = dns.A, tcp: bool = False, cls: int = dns.IN
) -> dns.Message:
    """
    One question through C{twisted.names.client}, over UDP or TCP: the
    whole response message, whatever its response code.
    """
    resolver = client.Resolver(servers=[("127.0.0.1", port)], reactor=reactor)
    queries = [dns.Query(name, type, cls)]
    try:
        if tcp:
            message: dns.Message = await resolver.queryTCP(queries, timeout=5)
        else:
            message = await resolver.queryUDP(queries, timeout=[2, 3])
    finally:
        for connection in list(resolver.connections):
            connection.transport.loseConnection()
    return message


def payloads(message: dns.Message, section: str = "answers") -> list[Any]:
    return [record.payload for record in getattr(message, section)]


def addresses(message: dns.Message) -> list[str]:
    return [payload.dottedQuad() for payload in payloads(message) if payload.TYPE == dns.A]
