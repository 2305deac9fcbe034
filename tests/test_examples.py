"""
Every example runs as its docstring says.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO, Background, RedisServer, readUntil


def run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_registry_tour(backend: str, request: pytest.FixtureRequest) -> None:
    url = "memory://"
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        url = server.url
    lines = run("examples/registry_tour.py", url).splitlines()
    assert [line.split()[0] for line in lines] == ["joined", "joined", "lookup", "left", "timedout"]
    assert "tour/db-2" in lines[-1]


@pytest.fixture
def background(tmp_path: Path) -> Iterator[Background]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MASSE_REGISTRY": f"sqlite://{tmp_path}/registry.db",
        "MASSE_NAMESPACE": "dev",
    }
    processes = Background(env)
    yield processes
    processes.stop()


def test_demo(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = [line.split()[1] for line in result.stdout.splitlines() if "event:" in line]
    assert kinds == ["joined", "joined", "timedout", "left"]
    assert "hi there, Carol (from pid" in result.stdout
    assert result.stdout.splitlines()[-1] == "done"


def test_greeter_under_twistd(background: Background, redis_server: RedisServer) -> None:
    twistd = str(Path(sys.executable).parent / "twistd")
    peer = background.start(
        twistd, "-n", "--pidfile=", "masse", "--name", "greeter",
        "--factory", "examples.greeter:factory", MASSE_REGISTRY=redis_server.url,
    )  # fmt: skip
    readUntil(peer, "greeter is listening")
    answer = background.call(
        "-m", "examples.greeter", "call", "Alice", MASSE_REGISTRY=redis_server.url
    )
    assert answer.startswith("hi there, Alice (from pid ")


def test_namespace_from_the_environment(background: Background) -> None:
    for namespace in ("dev", "prod"):
        server = background.start(
            sys.executable, "-m", "examples.namespaces", "serve", MASSE_NAMESPACE=namespace
        )
        readUntil(server, "db-server-1")
    for namespace in ("prod", "dev"):
        answer = background.call("-m", "examples.namespaces", "ask", MASSE_NAMESPACE=namespace)
        assert answer.strip() == f"db-server-1 in {namespace}"


def test_reconnecting_client_follows_a_restarted_peer(background: Background) -> None:
    first = background.start(sys.executable, "-m", "examples.reconnecting", "serve")
    readUntil(first, "ticker is listening")
    follower = background.start(sys.executable, "-m", "examples.reconnecting", "follow")
    readUntil(follower, f"from pid {first.pid}")
    first.send_signal(signal.SIGKILL)
    second = background.start(sys.executable, "-m", "examples.reconnecting", "serve")
    readUntil(second, "ticker is listening")
    readUntil(follower, f"from pid {second.pid}")


def test_framing_wrapper_stack(background: Background) -> None:
    server = background.start(sys.executable, "-m", "examples.framing", "serve")
    readUntil(server, "shouter is listening")
    answer = background.call("-m", "examples.framing", "send", "hello", "world")
    assert answer.strip() == "HELLO, WORLD"


def test_tac_file_and_masse_connect(background: Background) -> None:
    """
    twistd -ny runs the .tac; masse connect reaches its echo peer by name;
    stopping twistd releases both names.
    """
    twistd = str(Path(sys.executable).parent / "twistd")
    peers = background.start(twistd, "-ny", "examples/peers.tac", "--pidfile=")
    readUntil(peers, "greeter is listening")
    listed = background.call("-m", "txmasse", "ls")
    assert [line.split()[0] for line in listed.splitlines()[1:]] == ["echo", "greeter"]
    echoed = subprocess.run(
        [sys.executable, "-m", "txmasse", "connect", "echo"],
        input="hello by name\n",
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        env=background.env,
    )
    assert (echoed.returncode, echoed.stdout) == (0, "hello by name\n"), echoed.stderr
    peers.send_signal(signal.SIGTERM)
    peers.wait(10)
    assert background.call("-m", "txmasse", "ls", "--jsonl") == ""
