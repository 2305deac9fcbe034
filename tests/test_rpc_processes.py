"""
RPC by name between real processes over the suite's own redis-server: what
peers publish, found with masse providers/describe, called by URI with
masse call (one, a glob, --all), proxies across a SIGKILL and restart, and
garbage or lying schemas in the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.python.failure import Failure

from tests.conftest import RedisServer, eventually, newRegistry
from tests.rpc_helpers import Peers, masse
from tests.rpc_peer import Greet, Release, Stall
from txmasse import PeerRecord
from txmasse.rpc import RPC, CallInterrupted, Proxy, ProxyUnavailable, RPCError


@pytest.fixture
def peers(redis_server: RedisServer) -> Iterator[Peers]:
    started = Peers(redis_server.url)
    yield started
    started.killAll()


def test_discovery_and_calls(redis_server: RedisServer, peers: Peers) -> None:
    """
    Two AMP peers with different commands, one run by twistd masse (its
    commands found on its protocol class), one by a masse: endpoint.
    """
    url = redis_server.url
    peers.twistd("greeter", "tests.rpc_peer:greeterFactory")
    adder = peers.start("adder", "adder")
    instance = adder.waitFor("registered ").split()[1]

    found = masse("providers", "Add", "--ns", "dev", registry=url)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split()[:2] == ["adder", instance]
    assert "tcp:host=127.0.0.1" in found.stdout
    greeters = masse("--ns", "dev", "providers", "Greet", "--jsonl", registry=url)
    [line] = greeters.stdout.splitlines()
    assert json.loads(line)["name"] == "greeter"
    assert masse("providers", "Nothing", "--ns", "dev", registry=url).stdout == ""

    described = masse("describe", "greeter", "--ns", "dev", registry=url)
    assert described.returncode == 0, described.stderr
    assert "  Greet(name: Unicode) -> (greeting: Unicode) errors: GREETING_REFUSED" in (
        described.stdout
    )
    assert (
        "  Count(items: ListOf(Integer), scale: Float?, exact: Boolean?) -> "
        "(total: Float, pid: Integer)" in described.stdout
    )

    called = masse("call", "masse://dev/greeter/Greet", "name=Alice", registry=url)
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["greeting"].startswith("hi there, Alice (from pid ")
    globbed = masse("call", "masse://dev/gr*/Count", "items=[1,2,3]", "scale=0.5", registry=url)
    assert json.loads(globbed.stdout)["total"] == 3.0, globbed.stderr
    summed = masse("call", "masse://dev/adde?/Add", "a=2", "--timeout", "5", "b=40", registry=url)
    assert json.loads(summed.stdout) == {"sum": 42}, summed.stderr

    # Bad arguments (exit 2) and failures (exit 1), each one line naming the part.
    for args, status, part in [
        (["masse://dev/adder/Add", "a=abc", "b=1"], 2,
         "Add: argument 'a' must be Integer, got 'abc'"),
        (["masse://dev/adder/Greet", "name=x"], 1, "provides 'Greet' (they provide: Add)"),
        (["masse://dev/greeter/Greet", "name=nobody"], 1,
         "GREETING_REFUSED: will not greet 'nobody'"),
        (["masse://dev/greeter/Greet", "name=" + "x" * 70_000], 1,
         "Greet: a value is too long for AMP (at most 65,535 bytes)"),
    ]:  # fmt: skip
        failed = masse("call", *args, registry=url)
        assert failed.returncode == status, (args, failed.stderr)
        assert part in failed.stderr and failed.stderr.count("\n") == 1, failed.stderr
        assert failed.stdout == ""


@pytest.mark.parametrize(
    "uri, part",
    [
        ("http://dev/greeter/Greet", "scheme 'http' is not 'masse'"),
        ("masse://d!v/greeter/Greet", "invalid namespace 'd!v'"),
        ("masse://dev/greeter/Greet name", "argument 'name' must be NAME=VALUE"),
    ],
)
def test_call_bad_uri(uri: str, part: str) -> None:
    """
    Refused before any registry is asked (this one does not answer).
    """
    failed = masse("call", *uri.split(), registry="redis://127.0.0.1:1/0?timeout=0.5")
    assert failed.returncode == 2 and part in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr and failed.stderr.count("\n") == 1


@pytest_twisted.ensureDeferred
async def test_call_all_one_failing(redis_server: RedisServer, peers: Peers) -> None:
    """
    --all calls three greeters; one fails: every answer is printed, the
    failure says why, the exit status is 1. RPC.callAll says the same.
    """
    url = redis_server.url
    for name, kind in [
        ("greeter-1", "greeter"),
        ("greeter-2", "greeter"),
        ("greeter-3", "failing"),
    ]:
        peers.start(name, kind, wait=False)
    for peer in peers.started:
        peer.waitFor("registered ")
    result = masse("call", "--all", "masse://dev/greeter-*/Greet", "name=Ann", registry=url)
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["peer"] for line in lines] == ["greeter-1", "greeter-2", "greeter-3"]
    assert lines[0]["response"]["greeting"].startswith("hi there, Ann")
    assert lines[1]["response"]["greeting"].startswith("hi there, Ann")
    assert lines[2]["error"] == "GREETING_REFUSED: this greeter fails on purpose (Ann)"
    assert "1 of 3 providers failed" in result.stderr

    registry = newRegistry(url)
    try:
        answers = await RPC(registry, reactor).callAll("masse://dev/*/Greet", Greet, name="Bo")
        byName = {record.name: outcome for record, outcome in answers.items()}
        assert sorted(byName) == ["greeter-1", "greeter-2", "greeter-3"]
        failure = byName["greeter-3"]
        assert isinstance(failure, Failure)
        assert str(failure.value) == "this greeter fails on purpose (Bo)"
        assert byName["greeter-1"]["greeting"].startswith("hi there, Bo")  # type: ignore[index]
    finally:
        await registry.close()


@pytest_twisted.ensureDeferred
async def test_schema_garbage_and_lies(redis_server: RedisServer, peers: Peers) -> None:
    """
    A record whose schema is garbage is skipped with a warning naming it,
    and stays usable as a record; a schema that lies about a type fails the
    call, naming the field.
    """
    url = redis_server.url
    registry = newRegistry(url)
    junk = PeerRecord(
        "dev", "greeter-junk", ["tcp:host=127.0.0.1:port=9"], {"amp.commands": '{"v":1,"c":[}'}
    )
    lease = await registry.register(junk, 10)
    try:
        peers.start("greeter", "greeter", wait=False)
        peers.start("liar", "liar")
        peers.started[0].waitFor("registered ")
        found = masse("providers", "Greet", "--ns", "dev", registry=url)
        assert found.returncode == 0
        assert sorted(line.split()[0] for line in found.stdout.splitlines()) == ["greeter", "liar"]
        assert f"dev/greeter-junk (instance {junk.instance[:12]})" in found.stderr
        assert "schema is not JSON" in found.stderr
        listed = masse("--ns", "dev", "ls", "greeter-junk", registry=url)
        assert junk.instance[:12] in listed.stdout

        lied = masse("call", "masse://dev/liar/Greet", "name=x", registry=url)
        assert lied.returncode == 1
        assert "response 'greeting' is not Integer" in lied.stderr, lied.stderr
        skipped = masse("call", "masse://dev/greeter-junk/Greet", "name=x", registry=url)
        assert skipped.returncode == 1
        assert "provides 'Greet'" in skipped.stderr and "schema is not JSON" in skipped.stderr
    finally:
        await lease.release()
        await registry.close()


@pytest_twisted.ensureDeferred
async def test_proxy_survives_kill_and_restart(redis_server: RedisServer, peers: Peers) -> None:
    """
    A proxy keeps one connection; its peer is SIGKILLed with a call in
    flight (that call fails clearly, it is not retried), a call made while
    it is down waits, and is answered by the restarted peer.
    """
    registry = newRegistry(redis_server.url)
    proxy = Proxy("masse://dev/worker", registry, reactor, timeout=20)
    proxy.startService()
    try:
        first = peers.start("worker", "slow")
        answer = await proxy.callRemote(Greet, name="a")
        assert f"pid {first.process.pid}" in answer["greeting"]

        inFlight = proxy.callRemote(Stall)
        await eventually(lambda: first.saw("stalled"))
        first.kill()
        with pytest.raises(CallInterrupted, match="lost with the call in flight \\(not retried"):
            await inFlight

        waiting = proxy.callRemote(Greet, name="b")
        second = peers.start("worker", "slow")
        answer = await waiting
        assert f"pid {second.process.pid}" in answer["greeting"]
        released = await proxy.callRemote(Release)
        assert released == {"released": 0}  # the interrupted Stall never reached the new peer
    finally:
        await proxy.stopService()
        await registry.close()


@pytest_twisted.ensureDeferred
async def test_proxy_call_deadline(redis_server: RedisServer, peers: Peers) -> None:
    """
    A call unanswered by its deadline fails, naming the peer; its late
    answer is dropped, and the connection goes on serving other calls.
    """
    peers.start("worker", "slow")
    registry = newRegistry(redis_server.url)
    proxy = Proxy("masse://dev/worker", registry, reactor, timeout=2)
    proxy.startService()
    try:
        assert "hi there, a" in (await proxy.callRemote(Greet, name="a"))["greeting"]
        with pytest.raises(RPCError, match=r"masse://dev/worker: no answer from worker at .* 2s"):
            await proxy.callRemote(Stall)
        assert await proxy.callRemote(Release) == {"released": 1}
        assert "hi there, c" in (await proxy.callRemote(Greet, name="c"))["greeting"]
    finally:
        await proxy.stopService()
        await registry.close()


@pytest_twisted.ensureDeferred
async def test_proxy_deadline(redis_server: RedisServer) -> None:
    registry = newRegistry(redis_server.url)
    proxy = Proxy("masse://dev/absent", registry, reactor, timeout=0.5)
    with pytest.raises(ProxyUnavailable, match="not running"):
        await proxy.callRemote(Greet, name="a")
    proxy.startService()
    try:
        with pytest.raises(
            ProxyUnavailable, match=r"no connection within 0.5s \(last attempt: .*absent"
        ):
            await proxy.callRemote(Greet, name="a")
    finally:
        await proxy.stopService()
        await registry.close()


def test_example(redis_server: RedisServer, peers: Peers) -> None:
    """
    examples/rpc.py runs as its docstring says: two apps provide greet, a
    third calls every match, and masse call --all reaches them too.
    """
    apps = [peers.example("serve", name) for name in ("app-1", "app-2")]
    for app in apps:
        app.waitFor("provides greet")
    caller = peers.example("call", "*", "Alice")
    assert caller.process.wait(30) == 0, "".join(caller.lines)
    caller.waitFor("app-2: ")
    lines = sorted(line for line in caller.lines if line.startswith("app-"))
    assert [line.split(":")[0] for line in lines] == ["app-1", "app-2"]
    assert all("hi there, Alice (from pid " in line for line in lines)
    result = masse("call", "--all", "masse://dev/app-*/greet", "name=Bo", registry=redis_server.url)
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [a["response"]["result"][:12] for a in answers] == ["hi there, Bo"] * 2
