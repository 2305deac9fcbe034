"""
The masse command, run as a user would: a separate process, its output and
its exit status.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted

from tests.cli_helpers import Lines
from tests.helpers import RedisServer, masse, newRegistry, startMasse
from txmasse import PeerRecord, __version__, cli


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
    (entry,) = json.loads(listed.stdout)  # one document, an array
    assert entry["name"] == "web" and entry["metadata"] == {"role": "front"}
    assert 0 < entry["expiresIn"] <= 5
    assert json.loads(masse("ls", "db*", "--json", registry=redis_server.url).stdout) == []
    lines = masse("ls", "--jsonl", registry=redis_server.url).stdout.splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["web"]
    assert masse("ls", "db*", "--jsonl", registry=redis_server.url).stdout == ""

    resolved = masse("resolve", "web", registry=redis_server.url)
    assert resolved.stdout.splitlines() == [
        "tcp:host=127.0.0.1:port=8080",
        "unix:path=/tmp/web.sock",
    ]
    (record,) = json.loads(masse("resolve", "web", "--json", registry=redis_server.url).stdout)
    assert record["endpoints"] == ["tcp:host=127.0.0.1:port=8080", "unix:path=/tmp/web.sock"]


@pytest.mark.parametrize(
    "argv, ns, registry",
    [
        (["--ns", "a", "ls"], "a", None),
        (["ls", "--ns", "a"], "a", None),
        (["--ns", "a", "ls", "--ns", "b"], "b", None),
        (["--registry", "memory://", "watch", "--ns", "a"], "a", "memory://"),
        (["resolve", "db", "--registry", "memory://"], None, "memory://"),
        (["ls"], None, None),
    ],
)
def test_global_options_on_either_side(argv: list[str], ns: str, registry: str) -> None:
    args = cli._parser().parse_args(argv)
    assert (args.ns, args.registry, args.timeout) == (ns, registry, None)


def test_global_options_after_the_command(
    redis_server: RedisServer, registered: subprocess.Popen[str]
) -> None:
    """
    With no registry in the environment (the tests' points nowhere), the
    options after the command are the ones used.
    """
    here = masse("ls", "--jsonl", "--registry", redis_server.url, "--ns", "dev", registry=None)
    assert [json.loads(line)["name"] for line in here.stdout.splitlines()] == ["web"], here.stderr
    elsewhere = masse(
        "--registry", redis_server.url, "ls", "--ns", "other", "--jsonl", registry=None
    )
    assert (elsewhere.returncode, elsewhere.stdout) == (0, ""), elsewhere.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["call", "masse://dev/p/Add", "a=2", "b=40", "--timeout", "5"],
        ["call", "masse://dev/p/Add", "--timeout", "5", "a=2", "b=40"],
        ["call", "masse://dev/p/Add", "a=2", "--timeout", "5", "b=40"],
        ["--timeout", "5", "call", "masse://dev/p/Add", "a=2", "--all", "b=40"],
    ],
)
def test_call_arguments_around_options(argv: list[str]) -> None:
    parsed = cli._parser().parse_args(argv)
    assert (parsed.uri, parsed.arguments, parsed.timeout) == (
        "masse://dev/p/Add",
        ["a=2", "b=40"],
        "5",  # checked once parsed, as every global option is
    )


def test_version() -> None:
    result = masse("--version", registry=None)
    assert (result.returncode, result.stdout) == (0, f"masse (txmasse) {__version__}\n")


def test_watch_prints_members_then_changes(
    redis_server: RedisServer, registered: subprocess.Popen[str]
) -> None:
    watcher = startMasse("watch", "--json", registry=redis_server.url)
    assert watcher.stdout is not None
    lines = Lines(watcher.stdout)
    try:
        lines.waitFor('"present"')  # printed once the watch is live
        other = startMasse(
            "register",
            "db",
            "--endpoint",
            "tcp:host=127.0.0.1:port=5432",
            registry=redis_server.url,
        )
        assert other.stdout is not None and other.stdout.readline().startswith("registered")
        lines.waitFor('"joined"')
        other.send_signal(signal.SIGTERM)
        assert other.wait(10) == 0
        lines.waitFor('"left"')
    finally:
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(10)
    assert watcher.returncode == 0
    events = [json.loads(line) for line in lines.seen]
    assert [(e["kind"], e["record"]["name"]) for e in events] == [
        ("present", "web"),
        ("joined", "db"),
        ("left", "db"),
    ]


@pytest_twisted.ensureDeferred
async def test_watch_no_initial(
    redis_server: RedisServer, registered: subprocess.Popen[str]
) -> None:
    """
    With --no-initial, web (there before) is not shown; changes are: a probe
    registered and released until the watch, once live, prints it.
    """
    watcher = startMasse("watch", "--no-initial", registry=redis_server.url)
    assert watcher.stdout is not None
    lines = Lines(watcher.stdout)
    registry = newRegistry(redis_server.url)
    try:
        for _ in range(100):
            lease = await registry.register(
                PeerRecord("dev", "probe", ["tcp:host=127.0.0.1:port=9"]), 5
            )
            await lease.release()
            try:
                lines.waitFor("dev/probe", timeout=0.2)
                break
            except AssertionError:
                continue
    finally:
        await registry.close()
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(10)
    kinds = [line.split()[1:3] for line in lines.seen]
    assert kinds and all(name == "dev/probe" for _, name in kinds), lines.seen
    assert kinds[0][0] in ("joined", "left"), lines.seen


@pytest.mark.parametrize(
    "args, message",
    [
        (["frob"], "invalid choice: 'frob'"),
        ([], "the following arguments are required: COMMAND"),
        (["resolve", "bad name"], "invalid name 'bad name'"),
        (["ls", "a:b"], "invalid pattern 'a:b'"),
        (["--ns", "x/y", "ls"], "invalid namespace 'x/y'"),
        (["ls", "--ns", "x/y"], "invalid namespace 'x/y'"),
        (["--registry", "http://x", "ls"], "scheme 'http'"),
        (["ls", "--timeout", "0"], "--timeout '0': must be a number of seconds greater than 0"),
        (["ls", "--json", "--jsonl"], "--jsonl: not allowed with argument --json"),
        (["connect", "web", "--wait", "-1"], "--wait -1: must be a number of seconds, 0 or more"),
        (["connect", "web", "--wait", "1", "--half-close"], "not allowed with argument --wait"),
        (["completion", "ksh"], "invalid choice: 'ksh'"),
        (["register", "web"], "--endpoint"),
        (["register", "web", "--endpoint", "nonsense"], "unknown transport 'nonsense'"),
        (["register", "web", "--endpoint", "tls:host=a:port=0"], "bad port '0'"),
        (["register", "web", "--endpoint", "tcp:5:host=a", "--ttl", "0"], "invalid ttl"),
        (["register", "web", "--endpoint", "tcp:host=a:port=99999"], "port '99999' must be"),
        (["register", "web", "--endpoint", "tcp:host=a"], "'tcp:host=a': not a client endpoint"),
        (["register", "web", "--endpoint", "unix:"], "--endpoint 'unix:': not a client endpoint"),
        (["register", "web", "--endpoint", "masse:db"], "clients never follow a masse: endpoint"),
        (["register", "web", "--endpoint", "tcp:host=a\\"], "ends with a lone"),
        (["register", "web", "--endpoint", "tcp:host=a:port=1", "--ttl", "0"], "invalid ttl"),
        (["register", "web", "--endpoint", "tcp:host=a:port=1", "--meta", "x"], "KEY=VALUE"),
        (["register", "web", "--endpoint", "tcp:host=a:port=1", "--ttl", "x"], "invalid float"),
        (["connect", "db", "--ca", "/no/ca.pem"], "masse: --ca /no/ca.pem: cannot read it"),
        (["connect", "db", "--key", "/no/k.pem"], "masse: --key /no/k.pem: give --cert too"),
        (["connect", "db", "--cert", "/dev/null"], "masse: --cert /dev/null: no PEM certificate"),
        (["ls", "--bogus"], "unrecognized arguments: --bogus (see masse ls --help)"),
        (["--bogus"], "unrecognized arguments: --bogus (see masse --help)"),
        (["--ns", "dev", "--bogus=1"], "unrecognized arguments: --bogus=1 (see masse --help)"),
    ],
)
def test_bad_arguments_are_one_line(
    redis_server: RedisServer, args: list[str], message: str
) -> None:
    result = masse(*args, registry=redis_server.url)
    assert result.returncode == 2, result.stderr
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


def test_masse_timeout_is_the_default_deadline(redis_server: RedisServer) -> None:
    """
    Against a paused Redis (calls allowed 30 s by the URL), $MASSE_TIMEOUT
    bounds the command; --timeout wins over it; garbage in it is refused.
    """
    bad = masse("ls", registry=redis_server.url, env={"MASSE_TIMEOUT": "soon"})
    assert (bad.returncode, bad.stderr) == (
        2,
        "masse: $MASSE_TIMEOUT 'soon': must be a number of seconds greater than 0\n",
    )
    slow = redis_server.url + "?timeout=30"
    redis_server.pause()
    try:
        late = masse("ls", registry=slow, env={"MASSE_TIMEOUT": "0.3"})
        later = masse(
            "resolve", "db", "--timeout", "0.4", registry=slow, env={"MASSE_TIMEOUT": "x"}
        )
        # Its take-back, as it closes, waits one more --timeout, not the URL's 30 s.
        registering = masse(
            "register", "db", "--endpoint", "tcp:host=h:port=1", "--timeout", "0.4",
            registry=slow, timeout=15,
        )  # fmt: skip
    finally:
        redis_server.resume()
    assert (late.returncode, late.stderr) == (1, "masse: ls: no answer within 0.3s (--timeout)\n")
    assert later.stderr == "masse: resolve: no answer within 0.4s (--timeout)\n"
    assert registering.stderr == "masse: register: no answer within 0.4s (--timeout)\n"


def test_bash_completion(tmp_path: Path) -> None:
    """
    The bash script, sourced in a real bash, completes commands and options.
    """
    script = masse("completion", "bash", registry=None)
    assert script.returncode == 0, script.stderr
    (tmp_path / "masse.bash").write_text(script.stdout)
    complete = (
        f"source {tmp_path / 'masse.bash'}\n"
        "COMP_WORDS=(masse l); COMP_CWORD=1; _shtab_masse; echo ${COMPREPLY[@]}\n"
        "COMP_WORDS=(masse connect --ha); COMP_CWORD=2; _shtab_masse; echo ${COMPREPLY[@]}\n"
        "COMP_WORDS=(masse ls --j); COMP_CWORD=2; _shtab_masse; echo ${COMPREPLY[@]}\n"
    )
    result = subprocess.run(["bash", "-c", complete], capture_output=True, text=True, timeout=30)
    assert result.stdout.splitlines() == ["ls", "--half-close", "--json --jsonl"], result.stderr
    for shell in ("zsh", "fish"):
        other = masse("completion", shell, registry=None)
        assert other.returncode == 0 and "half-close" in other.stdout, other.stderr


def test_commands_that_run_until_stopped_tell_an_outage_on_stderr(tmp_path: Path) -> None:
    """
    Once up, watch and web show warnings: a registry going away is told,
    not left silent, and so is its coming back.
    """
    server = RedisServer(tmp_path)
    server.start()
    held = startMasse("register", "db", "--endpoint", "tcp:host=h:port=1", registry=server.url)
    running = [held]
    try:
        assert held.stdout is not None
        Lines(held.stdout).waitFor("registered dev/db")
        watcher = startMasse("watch", registry=server.url)
        web = startMasse("web", "--listen", "tcp:0:interface=127.0.0.1", registry=server.url)
        running += [watcher, web]
        assert watcher.stdout is not None and web.stdout is not None
        Lines(watcher.stdout).waitFor("present  dev/db")
        Lines(web.stdout).waitFor("masse web: namespaces dev")
        server.stop()
        errors = []
        for process in (watcher, web, held):
            assert process.stderr is not None
            errors.append(Lines(process.stderr))
            errors[-1].waitFor(f"registry {server.url} unreachable")
        server.start()
        for lines in errors:
            lines.waitFor(f"registry {server.url} reachable again after")
    finally:
        for process in running:
            process.kill()
            process.wait()
        server.stop()


def test_a_name_kept_by_masse_register_takes_drain_and_undrain(
    redis_server: RedisServer,
) -> None:
    held = startMasse(
        "register", "db", "--endpoint", "tcp:host=h:port=1", "--ttl", "1.5",
        registry=redis_server.url,
    )  # fmt: skip
    try:
        assert held.stdout is not None
        said = Lines(held.stdout)
        said.waitFor("registered dev/db")
        for command, state in (("drain", "draining"), ("undrain", "passing")):
            result = masse(command, "db", registry=redis_server.url)
            assert result.returncode == 0, result.stderr
            assert result.stdout.endswith(f": {state}\n"), result.stdout
            instance = result.stdout.split()[1].rstrip(":")
            said.waitFor(f"dev/db {instance}: {state}")
            listed = json.loads(masse("ls", "--json", registry=redis_server.url).stdout)
            assert [peer["draining"] for peer in listed] == [command == "drain"], listed
    finally:
        held.kill()
        held.wait()


def test_an_interrupt_while_waiting_for_the_registry_is_no_registry_failure() -> None:
    """
    Ctrl-C while C{masse ls} waits on a registry that does not answer:
    the call it cut short is not reported as the registry's failure.
    """
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        silent.settimeout(20)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0?timeout=30"
        listing = startMasse("--timeout", "30", "ls", registry=url)
        try:
            connection, _ = silent.accept()  # it is up, its handlers installed, its call out
            listing.send_signal(signal.SIGINT)
            assert listing.stderr is not None
            errors = Lines(listing.stderr)
            errors.waitFor("masse: stopping (once more to end at once)")
            assert listing.wait(10) == 128 + signal.SIGINT
            with pytest.raises(AssertionError, match="the output ended"):
                errors.waitFor(lambda line: False)  # every line, to its end
            assert errors.seen == ["masse: stopping (once more to end at once)"], errors.seen
            connection.close()
        finally:
            listing.kill()
            listing.wait()


def test_a_second_signal_while_stopping_ends_at_once(redis_server: RedisServer) -> None:
    """
    The first SIGTERM releases the name, against a paused Redis for as
    long as its timeout allows; a second one ends the process then and
    there, with no traceback.
    """
    held = startMasse(
        "register", "db", "--endpoint", "tcp:host=h:port=1",
        registry=redis_server.url + "?timeout=30",
    )  # fmt: skip
    try:
        assert held.stdout is not None and held.stderr is not None
        Lines(held.stdout).waitFor("registered dev/db")
        redis_server.pause()
        held.send_signal(signal.SIGTERM)
        errors = Lines(held.stderr)
        errors.waitFor("masse: stopping (once more to end at once)")
        held.send_signal(signal.SIGTERM)  # (two at once may arrive as one)
        assert held.wait(10) == 128 + signal.SIGTERM
        with pytest.raises(AssertionError, match="the output ended"):
            errors.waitFor(lambda line: False)  # every line, to its end
        assert not any("Traceback" in line for line in errors.seen), errors.seen
    finally:
        redis_server.resume()
        held.kill()
        held.wait()


def test_garbage_skipped_in_the_store_is_told_once_a_command_succeeds(
    redis_server: RedisServer,
) -> None:
    """
    A one-shot command holds its warnings back: shown after its output
    when it succeeds; when it fails, its one line says enough.
    """
    redis_server.command("SET", "masse:{junkyard}:n:junk", "not a hash")
    redis_server.command("ZADD", "masse:{junkyard}:names", "0", "junk")
    listed = masse("--ns", "junkyard", "ls", registry=redis_server.url)
    assert listed.returncode == 0 and listed.stdout.startswith("NAME"), listed.stderr
    assert listed.stderr == (
        f"masse: warning: registry {redis_server.url}: skipping a bad entry in namespace "
        "junkyard: 'masse:{junkyard}:n:junk' is not a hash of records\n"
    )
    failed = masse("--ns", "junkyard", "resolve", "junk", registry=redis_server.url)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1, failed.stderr
    assert failed.stderr.startswith("masse: no live instance of 'junk'")
