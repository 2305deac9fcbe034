"""
masse connect against real peers under twistd masse (Twisted's wire.Echo,
which does not support half-close, and one that does), the twistd masse
options it shares with the masse: endpoint, and the relay's rules on a
clock.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import usage

from tests.certs import Authority
from tests.cli_helpers import Lines, masseEnvironment, twistdMasse
from tests.helpers import RedisServer, masse
from txmasse._cli_connect import Relay
from txmasse.service import Options

# The relay's rules, on a clock


class HalfCloseableTransport(StringTransport):
    halfClosed = False

    def loseWriteConnection(self) -> None:
        self.halfClosed = True


def connectedRelay(wait: float = 1.0, halfClose: bool = False) -> tuple[Relay, Clock]:
    clock = Clock()
    relay = Relay(clock, wait, halfClose)
    relay.remote.makeConnection(HalfCloseableTransport())
    relay.local.makeConnection(StringTransport())
    return relay, clock


def test_end_of_input_waits_until_the_peer_is_quiet() -> None:
    relay, clock = connectedRelay(wait=1.0)
    relay.local.dataReceived(b"hello\n")
    relay.local.readConnectionLost()
    remote = relay.remote.transport
    assert isinstance(remote, HalfCloseableTransport)
    assert remote.value() == b"hello\n" and not remote.halfClosed
    clock.advance(0.9)
    relay.remote.dataReceived(b"hel")  # the wait starts again
    clock.advance(0.9)
    relay.remote.dataReceived(b"lo\n")
    clock.advance(0.9)
    assert not remote.disconnecting
    clock.advance(0.1)
    assert remote.disconnecting and relay.local.transport.disconnecting
    assert relay.local.transport.value() == b"hello\n"
    assert not clock.getDelayedCalls()


def test_half_close_waits_for_the_peer_to_close() -> None:
    relay, clock = connectedRelay(halfClose=True)
    relay.local.readConnectionLost()
    remote = relay.remote.transport
    assert isinstance(remote, HalfCloseableTransport)
    assert remote.halfClosed and not clock.getDelayedCalls()
    relay.remote.readConnectionLost()  # the peer is done too
    assert remote.disconnecting


def test_the_peer_closing_first_ends_it() -> None:
    relay, clock = connectedRelay()
    relay.remote.connectionLost(None)
    assert relay.local.transport.disconnecting  # type: ignore[union-attr]
    relay.local.connectionLost(None)
    assert relay.done.called and not clock.getDelayedCalls()


def test_the_peer_closing_before_our_input_is_up_ends_it() -> None:
    relay = Relay(Clock(), 1.0, False)
    relay.remote.makeConnection(StringTransport())
    relay.remote.connectionLost(None)
    relay.local.makeConnection(StringTransport())
    assert relay.local.transport.disconnecting  # type: ignore[union-attr]


# Real peers


@pytest.fixture
def peers(redis_server: RedisServer, tmp_path: Path) -> Iterator[dict[str, Lines]]:
    """
    twistd masse serving wire.Echo as "echo" (its bytes logged by wrap=log),
    and a half-close aware echo as "polite" (also on a UNIX socket).
    """
    started = [
        twistdMasse(
            "--name", "echo", "--factory", "twisted.protocols.wire:Echo", "--wrap", "log",
            registry=redis_server.url,
        ),
        twistdMasse(
            "--name", "polite", "--factory", "tests.cli_helpers:PoliteEcho",
            "--unix", str(tmp_path / "polite.sock"),
            registry=redis_server.url,
        ),
    ]  # fmt: skip
    logs = {}
    for name, process in zip(("echo", "polite"), started, strict=True):
        assert process.stdout is not None
        logs[name] = Lines(process.stdout)
        logs[name].waitFor(f"dev/{name} is listening")
    try:
        yield logs
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(10)
            finally:
                process.kill()


def test_connect_gets_the_reply_of_a_peer_without_half_close(
    redis_server: RedisServer, peers: dict[str, Lines]
) -> None:
    """
    echo hello | masse connect echo, three times at once: each prints hello.
    """
    env = masseEnvironment(redis_server.url)
    runs = [
        subprocess.Popen(
            f"echo hello{i} | {sys.executable} -m txmasse connect echo",
            shell=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd="/",
        )
        for i in range(3)
    ]
    results = [(*run.communicate(timeout=30), run.returncode) for run in runs]
    assert results == [(f"hello{i}\n", "", 0) for i in range(3)]
    peers["echo"].waitFor("received 7 bytes")  # wrap=log


def test_half_close_reaches_the_peer_and_the_default_does_not(
    redis_server: RedisServer, peers: dict[str, Lines], tmp_path: Path
) -> None:
    halfClosed = masse(
        "connect", "polite", "--half-close", stdin="hello\n", registry=redis_server.url
    )
    assert (halfClosed.returncode, halfClosed.stdout) == (0, "hello\nbye\n"), halfClosed.stderr
    waited = masse("connect", "polite", "--wait", "0.2", stdin="hello\n", registry=redis_server.url)
    assert (waited.returncode, waited.stdout) == (0, "hello\n"), waited.stderr
    # --unix is advertised first (and so used from the same host)
    resolved = masse("resolve", "polite", registry=redis_server.url).stdout.splitlines()
    assert resolved[0] == f"unix:path={tmp_path / 'polite.sock'}", resolved
    assert resolved[1].startswith("tcp:host=127.0.0.1:port=")


def test_connect_timeout(redis_server: RedisServer) -> None:
    """
    --timeout bounds finding and reaching the peer.
    """
    result = masse("connect", "nobody", "--timeout", "0.5", registry=redis_server.url)
    assert result.returncode == 1
    assert "nobody" in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


# twistd masse options


def test_twistd_masse_help_documents_every_option() -> None:
    shown = str(Options())
    for option in (
        "--name", "--factory", "--ns", "--registry", "--listen", "--unix", "--advertise",
        "--ttl", "--wrap", "--meta", "--cert", "--key", "--ca", "--provides",
    ):  # fmt: skip
        assert option in shown, option


@pytest.mark.parametrize(
    "args, message",
    [
        (["--wrap", "nope"], "unknown wrapper 'nope'"),
        (["--wrap", "idle=-1"], "wrapper 'idle'"),
        (["--unix", ""], "--unix '': must be a socket path"),
        (["--unix", "/no/such/dir/s"], "--unix '/no/such/dir/s': no directory '/no/such/dir'"),
    ],
)
def test_twistd_masse_bad_endpoint_options(args: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError, match=message):
        Options().parseOptions(["--name", "g", "--factory", "examples.greeter:factory", *args])


def test_twistd_masse_unix_with_tls_is_refused(tmp_path: Path) -> None:
    cert, key = Authority.create(tmp_path).issue("g.default")
    with pytest.raises(usage.UsageError, match="--unix cannot be used with --cert"):
        Options().parseOptions(
            ["--name", "g", "--ns", "default", "--factory", "examples.greeter:factory",
             "--cert", str(cert), "--key", str(key), "--unix", str(tmp_path / "s")]
        )  # fmt: skip
