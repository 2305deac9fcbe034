"""
The masse command, run as a user would: a separate process, its output and
its exit status.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.helpers import RedisServer, masse, startMasse


@pytest.fixture
def registered(redis_server: RedisServer) -> Iterator[subprocess.Popen[str]]:
    process = startMasse(
        "register",
        "web",
        "--endpoint",
        "tcp:host=127.0.0.1:port=8080",
        "--endpoint",
        "unix:path=/tmp/web.sock",
        "--meta",
        "role=front",
        "--ttl",
        "5",
        registry=redis_server.url,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("registered dev/web instance "), line
    yield process
    process.kill()
    process.wait()


def test_ls_resolve_and_json(redis_server: RedisServer, registered: subprocess.Popen[str]) -> None:
    result = masse("ls", registry=redis_server.url)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "INSTANCE", "ENDPOINTS", "AGE", "LEFT", "HEALTH", "METADATA"]
    assert row.startswith("web ") and "tcp:host=127.0.0.1:port=8080" in row
    assert row.endswith("role=front")

    listed = masse("ls", "w*", "--json", registry=redis_server.url)
    (entry,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert entry["name"] == "web" and entry["metadata"] == {"role": "front"}
    assert 0 < entry["expiresIn"] <= 5
    assert masse("ls", "db*", "--json", registry=redis_server.url).stdout == ""

    resolved = masse("resolve", "web", registry=redis_server.url)
    assert resolved.stdout.splitlines() == [
        "tcp:host=127.0.0.1:port=8080",
        "unix:path=/tmp/web.sock",
    ]


def test_register_releases_on_stop_and_watch_sees_it(
    redis_server: RedisServer, registered: subprocess.Popen[str]
) -> None:
    watcher = startMasse("watch", "--json", registry=redis_server.url)
    try:
        # Its subscription is up once Redis counts a subscriber; it reads its
        # first view right after, long before the register below starts.
        deadline = time.monotonic() + 30
        while redis_server.command("PUBSUB", "NUMSUB", "masse:{dev}:events")[1] == 0:
            assert watcher.poll() is None and time.monotonic() < deadline, "watch did not start"
            time.sleep(0.01)
        other = startMasse(
            "register",
            "db",
            "--endpoint",
            "tcp:host=127.0.0.1:port=5432",
            registry=redis_server.url,
        )
        assert other.stdout is not None and other.stdout.readline().startswith("registered")
        other.send_signal(signal.SIGTERM)
        assert other.wait(10) == 0
    finally:
        watcher.send_signal(signal.SIGTERM)
        out, err = watcher.communicate(timeout=10)
    assert watcher.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["kind"], e["record"]["name"]) for e in events] == [("joined", "db"), ("left", "db")]


@pytest.mark.parametrize(
    "args, message",
    [
        (["frob"], "invalid choice: 'frob'"),
        ([], "the following arguments are required: COMMAND"),
        (["resolve", "bad name"], "invalid name 'bad name'"),
        (["ls", "a:b"], "invalid pattern 'a:b'"),
        (["--ns", "x/y", "ls"], "invalid namespace 'x/y'"),
        (["--registry", "http://x", "ls"], "scheme 'http'"),
        (["register", "web"], "--endpoint"),
        (["register", "web", "--endpoint", "nonsense"], "invalid endpoint description"),
        (["register", "web", "--endpoint", "tcp:host=a:port=1", "--ttl", "0"], "invalid ttl"),
        (["register", "web", "--endpoint", "tcp:host=a:port=1", "--meta", "x"], "KEY=VALUE"),
        (["register", "web", "--endpoint", "tcp:host=a:port=1", "--ttl", "x"], "invalid float"),
    ],
)
def test_bad_arguments_are_one_line(
    redis_server: RedisServer, args: list[str], message: str
) -> None:
    result = masse(*args, registry=redis_server.url)
    assert result.returncode in (1, 2)
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_peer_and_unreachable_registry(redis_server: RedisServer) -> None:
    unknown = masse("resolve", "nobody", registry=redis_server.url)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == (
        f"masse: no live instance of 'nobody' in namespace 'dev' of registry {redis_server.url}"
    )
    down = masse("ls", registry="redis://127.0.0.1:1/0?timeout=0.5")
    assert down.returncode == 1
    assert "Connection refused" in down.stderr and len(down.stderr.splitlines()) == 1
