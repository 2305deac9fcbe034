"""
C{masse web}, as an operator uses it: a real C{masse web} process on the
suite's own redis-server, peers in processes of their own (registered,
then SIGKILLed), and the page read back from a real headless Chromium.

One dashboard, one Redis and one browser serve the whole module (Chromium
is slow to start); each test uses names of its own.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.browser import Browser
from tests.conftest import RedisServer
from tests.web_helpers import Dashboard, EventStream, Peer, firstLine, masseProcess, reportUsage
from txmasse.records import localHostIdentity

NS = "webtest"
OTHER = "webother"
HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'

ROWS = """[...document.querySelectorAll("#peers tbody tr")].map((row) => ({
  instance: row.dataset.instance,
  cells: Object.fromEntries([...row.cells].map((c) => [c.dataset.label, c.textContent])),
}))"""
EVENTS = """[...document.querySelectorAll("#events li")].map((li) => [li.dataset.kind,
  li.dataset.instance])"""


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("web-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dashboard(redis: RedisServer) -> Iterator[Dashboard]:
    web = Dashboard(redis.url, NS, OTHER)
    yield web
    web.stop()


@pytest.fixture(scope="module")
def browser(dashboard: Dashboard) -> Iterator[Browser]:
    chromium = Browser()
    chromium.open(dashboard.url)
    chromium.waitFor("document.getElementById('status').textContent", "live".__eq__, "'live'")
    yield chromium
    chromium.close()


@pytest.fixture
def peers(redis: RedisServer) -> Iterator[list[Peer]]:
    started: list[Peer] = []
    yield started
    for peer in started:
        peer.kill()


def rowsOf(browser: Browser, *instances: str) -> dict[str, dict[str, str]]:
    """
    The page's rows for exactly these instances, once it shows all of them.
    """
    rows = browser.waitFor(
        ROWS,
        lambda rows: {r["instance"] for r in rows} >= set(instances),
        f"instances {instances}",
    )
    return {r["instance"]: r["cells"] for r in rows if r["instance"] in instances}


def test_page_shows_peers_and_follows_a_sigkill(
    redis: RedisServer, browser: Browser, peers: list[Peer]
) -> None:
    """
    Two peers show with their endpoints, host, lease time and metadata
    (the hostile metadata as text); a SIGKILLed one goes, and its
    C{timedout} is in the events beside the table.
    """
    peers.append(Peer(redis.url, NS, "web-a", 4001, ttl=1, meta={"role": HOSTILE}))
    peers.append(Peer(redis.url, NS, "web-b", 4002, ttl=5, meta={"zone": "b"}))
    a, b = peers
    rows = rowsOf(browser, a.instance, b.instance)
    assert rows[a.instance]["name"] == "web-a"
    assert rows[a.instance]["namespace"] == NS
    assert rows[a.instance]["endpoints"] == "tcp:host=127.0.0.1:port=4001"
    assert rows[a.instance]["metadata"] == f"role={HOSTILE}"
    assert rows[a.instance]["health"] == "passing"
    assert rows[a.instance]["instance"] == a.instance[:12]
    assert rows[b.instance]["metadata"] == "zone=b"
    assert rows[b.instance]["host"] == localHostIdentity().split("/")[0]
    # The store's text stayed text: no element was made of it, nothing ran.
    assert browser.evaluate("document.scripts.length") == 1
    assert browser.evaluate("document.querySelectorAll('#peers img').length") == 0
    assert browser.evaluate("window.pwned === undefined") is True

    # The lease time left is read from the registry and counts down.
    left = browser.waitFor(
        f"document.querySelector('tr[data-instance=\"{b.instance}\"] td.left').textContent",
        lambda text: text.endswith("s") and 0 < float(text[:-1]) <= 5,
        "a lease time within the ttl",
    )
    assert 0 < float(left[:-1]) <= 5

    a.kill()
    browser.waitFor(
        ROWS,
        lambda rows: a.instance not in {r["instance"] for r in rows},
        "the killed peer gone",
    )
    events = browser.evaluate(EVENTS)
    assert ["timedout", a.instance] in events
    assert ["joined", a.instance] in events
    assert rowsOf(browser, b.instance)


def choose(browser: Browser, namespace: str) -> None:
    """
    Pick C{namespace} in the page's selector, as a user would.
    """
    browser.evaluate(
        "(() => { const s = document.getElementById('namespace');"
        f" s.value = {json.dumps(namespace)}; s.dispatchEvent(new Event('change')); }})()"
    )


def test_namespace_selector(redis: RedisServer, browser: Browser, peers: list[Peer]) -> None:
    peers.append(Peer(redis.url, NS, "sel-here", 4011, ttl=5))
    peers.append(Peer(redis.url, OTHER, "sel-there", 4012, ttl=5))
    here, there = peers
    rows = rowsOf(browser, here.instance, there.instance)
    assert rows[there.instance]["namespace"] == OTHER
    options = browser.evaluate(
        "[...document.getElementById('namespace').options].map(o => o.value)",
    )
    assert options == ["", NS, OTHER]
    choose(browser, OTHER)
    shown = browser.waitFor(
        ROWS, lambda rows: all(r["cells"]["namespace"] == OTHER for r in rows), "only webother"
    )
    assert there.instance in {r["instance"] for r in shown}
    choose(browser, "")
    rowsOf(browser, here.instance, there.instance)


def test_narrow_window_stacks_the_events_under_cards(
    redis: RedisServer, browser: Browser, peers: list[Peer]
) -> None:
    peers.append(Peer(redis.url, NS, "narrow", 4021, ttl=5))
    rowsOf(browser, peers[0].instance)
    layout = """(() => {
      const table = document.getElementById('peers-section').getBoundingClientRect();
      const events = document.getElementById('events-section').getBoundingClientRect();
      const card = document.querySelector('#peers tbody tr').getBoundingClientRect();
      return {head: getComputedStyle(document.querySelector('#peers thead')).display,
              card: card.width,
              below: events.top >= table.bottom, width: document.documentElement.scrollWidth};
    })()"""
    try:
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            session=True,
            width=380,
            height=800,
            deviceScaleFactor=1,
            mobile=True,
        )
        shown = browser.waitFor(layout, lambda v: v["head"] == "none", "the narrow layout")
        assert shown["below"] is True
        assert shown["width"] <= 380  # nothing scrolls sideways
        assert shown["card"] >= 300  # each instance a card across the window
    finally:
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            session=True,
            width=1280,
            height=800,
            deviceScaleFactor=1,
            mobile=False,
        )


def test_api_peers(redis: RedisServer, dashboard: Dashboard, peers: list[Peer]) -> None:
    peers.append(Peer(redis.url, NS, "api-peer", 4031, ttl=5, meta={"k": HOSTILE}))
    (peer,) = peers
    status, contentType, _ = dashboard.get(f"api/peers?ns={NS}")
    assert (status, contentType) == (200, "application/json")
    listed = [p for p in dashboard.json(f"api/peers?ns={NS}") if p["instance"] == peer.instance]
    assert len(listed) == 1
    shown = listed[0]
    assert shown["name"] == "api-peer"
    assert shown["namespace"] == NS
    assert shown["endpoints"] == ["tcp:host=127.0.0.1:port=4031"]
    assert shown["metadata"] == {"k": HOSTILE}
    assert shown["health"] == "passing"
    assert shown["draining"] is False
    assert 0 < shown["expiresIn"] <= 5
    assert all(p["namespace"] == NS for p in dashboard.json(f"api/peers?ns={NS}"))
    assert peer.instance not in {p["instance"] for p in dashboard.json(f"api/peers?ns={OTHER}")}


@pytest.mark.parametrize(
    ("query", "status", "named"),
    [("ns=nowhere", 404, "'nowhere'"), ("ns=bad%21ns", 400, "'bad!ns'")],
)
def test_api_refuses_other_namespaces(
    dashboard: Dashboard, query: str, status: int, named: str
) -> None:
    for path in ("api/peers", "api/events"):
        got, contentType, body = dashboard.get(f"{path}?{query}")
        assert (got, contentType) == (status, "application/json")
        assert named in json.loads(body)["error"]


def test_refuses_other_host_names(dashboard: Dashboard) -> None:
    """
    On loopback it answers only to loopback names: a page from elsewhere
    that rebinds its DNS name to 127.0.0.1 reads nothing.
    """
    status, _, body = dashboard.get("api/peers", host="evil.example:8370")
    assert status == 403
    assert b"'evil.example'" in body
    assert dashboard.get("api/peers", host=f"localhost:{dashboard.port}")[0] == 200
    for headers, named in (
        (b"Host: evil.example\r\nHost: 127.0.0.1\r\n", b"'evil.example, 127.0.0.1'"),
        (b"", b"'(none)'"),  # HTTP/1.1 requires one
    ):
        with socket.create_connection(("127.0.0.1", dashboard.port), timeout=10) as raw:
            raw.sendall(b"GET /api/peers HTTP/1.1\r\n" + headers + b"Connection: close\r\n\r\n")
            answer = b"".join(iter(lambda: raw.recv(65536), b""))
        assert answer.startswith(b"HTTP/1.1 403 ") and named in answer, answer[:300]


def test_page_headers(dashboard: Dashboard) -> None:
    status, contentType, body = dashboard.get("")
    assert (status, contentType) == (200, "text/html; charset=utf-8")
    assert b'src="dashboard.js"' in body
    for path, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        status, contentType, body = dashboard.get(path)
        assert status == 200 and contentType.startswith(kind) and body


def eventAbout(stream: EventStream, instance: str) -> dict[str, Any]:
    """
    The next peer event about C{instance} (other tests' peers may come and
    go meanwhile).
    """
    while True:
        message = stream.nextPeerEvent()
        if message["record"]["instance"] == instance:
            return message


def test_events_stream(redis: RedisServer, dashboard: Dashboard, peers: list[Peer]) -> None:
    """
    The stream starts with the current members (C{present}), then every
    change, one JSON object each.
    """
    peers.append(Peer(redis.url, NS, "sse-old", 4041, ttl=5))
    old = peers[0]
    deadline = time.monotonic() + 10
    while old.instance not in {p["instance"] for p in dashboard.json(f"api/peers?ns={NS}")}:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    stream = EventStream(dashboard.port, f"?ns={NS}")
    try:
        assert stream.status == 200
        assert "content-type: text/event-stream" in stream.headers
        event, hello = stream.next()
        assert (event, hello["namespaces"]) == ("hello", [NS])
        assert hello["registry"] == redis.url
        present: dict[str, Any] = {}
        while old.instance not in present:
            message = stream.nextPeerEvent()
            assert message["kind"] == "present"
            present[message["record"]["instance"]] = message
        assert present[old.instance]["record"]["name"] == "sse-old"

        peers.append(Peer(redis.url, NS, "sse-new", 4042, ttl=1))
        new = peers[1]
        joined = eventAbout(stream, new.instance)
        assert joined["kind"] == "joined"
        assert joined["record"]["endpoints"] == ["tcp:host=127.0.0.1:port=4042"]
        new.kill()
        assert eventAbout(stream, new.instance)["kind"] == "timedout"
    finally:
        stream.close()
    # A stream that opens later hears of them as recent events first.
    later = EventStream(dashboard.port, f"?ns={NS}")
    try:
        assert later.next()[0] == "hello"
        recent = []
        while True:
            event, message = later.next()
            if event != "recent":
                break
            if message["record"]["instance"] == new.instance:
                recent.append(message["kind"])
        assert recent == ["joined", "timedout"]
    finally:
        later.close()


def test_metrics(redis: RedisServer, dashboard: Dashboard, peers: list[Peer]) -> None:
    """
    C{/metrics} parses, with the registry's view (C{masse_instances}) and
    the dashboard process's own metrics.
    """
    peers.append(Peer(redis.url, NS, "metered", 4051, ttl=1))
    peers.append(Peer(redis.url, NS, "metered", 4052, ttl=1))

    def instances() -> dict[tuple[str, ...], float]:
        status, contentType, body = dashboard.get("metrics")
        assert status == 200 and contentType.startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert families["masse_registry_calls"].type == "counter"
        ops = {s.labels["op"] for s in families["masse_registry_calls"].samples}
        assert "watch" in ops  # its own watches, counted by its own metrics
        assert families["masse_instances"].type == "gauge"
        return {
            (s.labels["namespace"], s.labels["name"], s.labels["health"]): s.value
            for s in families["masse_instances"].samples
        }

    deadline = time.monotonic() + 10
    while instances().get((NS, "metered", "passing")) != 2:
        assert time.monotonic() < deadline, instances()
        time.sleep(0.05)
    peers.pop().kill()
    deadline = time.monotonic() + 10
    while instances().get((NS, "metered", "passing")) != 1:
        assert time.monotonic() < deadline, instances()
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--listen", "nosuch:1"], "--listen 'nosuch:1'"),
        (["--listen", "tcp:99999"], "port '99999' must be a whole number from 0 to 65535"),
        (["--listen", "tcp:0\\"], "ends with a lone"),
        (["bad!ns"], "'bad!ns'"),
        (["--refresh", "0"], "'0'"),
    ],
)
def test_bad_arguments(redis: RedisServer, args: list[str], named: str) -> None:
    process = masseProcess(redis.url, "web", *args)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2, err
    assert named in err
    assert len(err.strip().splitlines()) == 1


def test_a_taken_port_is_one_line_naming_listen(redis: RedisServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = masseProcess(redis.url, "web", "--listen", f"tcp:{port}:interface=127.0.0.1")
        _, err = process.communicate(timeout=30)
    assert process.returncode == 1, err
    assert err.startswith(f"masse: --listen 'tcp:{port}:interface=127.0.0.1': Couldn't listen")
    assert "Address already in use" in err and len(err.strip().splitlines()) == 1


def test_loopback_by_default(redis: RedisServer) -> None:
    process = masseProcess(redis.url, "web", "--listen", "tcp:0")
    try:
        assert "http://0.0.0.0:" in firstLine(process)
    finally:
        process.kill()
        process.communicate()
    process = masseProcess(redis.url, "web", "--help")
    out, _ = process.communicate(timeout=30)
    assert "tcp:8370:interface=127.0.0.1" in out


def test_stream_use_when_asked(
    redis: RedisServer, dashboard: Dashboard, browser: Browser, peers: list[Peer]
) -> None:
    """
    C{connected}/C{disconnected} reports reach a stream (and the page) only
    when asked for: C{?usage=1}, the page's "stream use" box.
    """
    peers.append(Peer(redis.url, NS, "used", 4061, ttl=5))
    (used,) = peers
    rowsOf(browser, used.instance)
    browser.evaluate(
        "(() => { const box = document.getElementById('usage'); box.checked = true;"
        " box.dispatchEvent(new Event('change')); })()"
    )
    rowsOf(browser, used.instance)  # reconnected, with usage
    plain = EventStream(dashboard.port, f"?ns={NS}")
    withUsage = EventStream(dashboard.port, f"?ns={NS}&usage=1")
    try:
        for stream in (plain, withUsage):
            while stream.next()[0] != "status":
                pass  # then the members, as present
        reportUsage(redis.url, NS, "used", "connected")
        message = withUsage.nextPeerEvent()
        while message["kind"] != "connected":  # others' peers may time out meanwhile
            message = withUsage.nextPeerEvent()
        assert message["source"] == "tester:1"
        assert message["record"]["instance"] == used.instance
        shown = browser.waitFor(
            EVENTS, lambda events: ["connected", used.instance] in events, "the connected report"
        )
        assert ["connected", used.instance] in shown
        # The plain stream goes from its members to the next join without the report.
        peers.append(Peer(redis.url, NS, "used-after", 4062, ttl=5))
        seen = [plain.nextPeerEvent()]
        while seen[-1]["record"]["instance"] != peers[1].instance:
            seen.append(plain.nextPeerEvent())
        assert seen[-1]["kind"] == "joined"
        assert "connected" not in {message["kind"] for message in seen}
    finally:
        plain.close()
        withUsage.close()
        browser.evaluate(
            "(() => { const box = document.getElementById('usage'); box.checked = false;"
            " box.dispatchEvent(new Event('change')); })()"
        )


def test_registry_down_then_up(tmp_path: Path) -> None:
    """
    Started before its registry answers, the dashboard says why it shows
    nothing (503, and a status on the stream), and catches up once the
    registry is there.
    """
    server = RedisServer(tmp_path)  # its port chosen, not started yet
    web = Dashboard(f"{server.url}?timeout=0.3", NS)
    stream: EventStream | None = None
    try:
        for _ in range(100):  # until its first watch has failed (a refusal: at once)
            status, _, body = web.get(f"api/peers?ns={NS}")
            assert status == 503
            if json.loads(body)["error"] != "not watching yet":
                break
            time.sleep(0.02)
        assert f"127.0.0.1:{server.port}" in json.loads(body)["error"]
        stream = EventStream(web.port, f"?ns={NS}")
        assert stream.next()[0] == "hello"
        while True:  # the first status may come before the watch has failed
            event, down = stream.next(timeout=15)
            assert (event, down["synced"]) == ("status", False)
            if down["error"] != "not watching yet":
                break
        assert f"127.0.0.1:{server.port}" in down["error"]
        server.start()
        while True:  # the watch is retried after 1 s, then 2 s...
            event, message = stream.next(timeout=15)
            if event == "status" and message["synced"]:
                break
        assert web.json(f"api/peers?ns={NS}") == []
    finally:
        if stream is not None:
            stream.close()
        web.stop()
        server.stop()
