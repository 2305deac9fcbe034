"""
The README and docs/ as written: their links lead somewhere, the README's
first client runs against a real peer, and every C{masse:} example of
docs/endpoints.md is accepted (the IPv6 one over a real socket).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.protocols.wire import Echo

from tests.certs import Authority
from tests.conftest import eventually
from txmasse import registryFromURL

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

PENDING: set[str] = set()
"""Pages other branches add; docs/index.md links them already."""

LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """
    The anchor a Markdown heading gets on GitHub.
    """
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def section(page: Path, heading: str) -> str:
    """
    The text of C{page} under C{heading}, up to the next heading of its level.
    """
    text = page.read_text()
    start = text.index(heading + "\n")
    level = heading.split(" ")[0]
    end = text.find("\n" + level + " ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def test_slug_matches_github() -> None:
    assert slug("Servers: listening under a name") == "servers-listening-under-a-name"
    assert slug("`twistd masse` and `RegistryService`") == "twistd-masse-and-registryservice"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_links_lead_somewhere(page: Path) -> None:
    """
    Every relative link names a file that exists (or a page another branch
    adds), and every #anchor a heading of its page.
    """
    links = LINK.findall(page.read_text())
    assert links, f"{page.name} links nothing"
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            assert path.parent == DOCS and path.name in PENDING, f"{page.name}: {link}"
            continue
        if anchor:
            assert anchor in anchors(path), f"{page.name}: {link}: no such heading"


def test_readme_keeps_the_commands_ci_and_newcomers_run() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "```sh\nbash tests/run.sh\n```" in readme
    assert "```sh\npip install . && python -m examples.demo\n```" in readme
    assert "editable with `pip install -e .`:" in readme  # plain -e works: test_plugin_install
    assert len(readme.splitlines()) <= 220, "the README is a guide: move reference to docs/"


def test_index_links_every_page() -> None:
    index = (DOCS / "index.md").read_text()
    pages = {page.name for page in DOCS.glob("*.md")} - {"index.md"}
    for name in sorted(pages | PENDING):
        assert f"]({name})" in index, name


@pytest.fixture
def echoPeer(tmp_path: Path) -> Iterator[dict[str, str]]:
    """
    C{twistd masse} serving Twisted's echo as C{echo} in C{dev}, on an
    SQLite registry, started outside the checkout as the README says; the
    environment that reaches it.
    """
    bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": "",
        "MASSE_REGISTRY": f"sqlite://{tmp_path}/masse.db",
        "MASSE_NAMESPACE": "dev",
    }
    twistd = subprocess.Popen(
        [
            "twistd", "-n", "--pidfile=", "--logfile=echo.log", "masse",
            "--name", "echo", "--factory", "twisted.protocols.wire:Echo",
        ],
        cwd=tmp_path,
        env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["masse", "resolve", "echo"], env=env, capture_output=True).returncode:
            assert twistd.poll() is None, (tmp_path / "echo.log").read_text()
            assert time.monotonic() < deadline, "echo never registered"
            time.sleep(0.1)
        yield env
    finally:
        twistd.terminate()
        twistd.wait(30)


def test_readme_first_client_runs_as_written(echoPeer: dict[str, str], tmp_path: Path) -> None:
    readme = ROOT / "README.md"
    found = re.search(
        r"```python\n(.*?)```", section(readme, "## A first client, in Python"), re.DOTALL
    )
    assert found is not None, "the README lost its first client"
    client = tmp_path / "echo_client.py"
    client.write_text(found.group(1))
    result = subprocess.run(
        [sys.executable, str(client)],
        cwd=tmp_path,
        env=echoPeer,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "hello\n"


def endpointExamples() -> list[str]:
    """
    The C{masse:} strings of docs/endpoints.md's Examples section, as written.
    """
    examples = section(DOCS / "endpoints.md", "## Examples")
    found = re.findall(r"^    (masse:\S+)", examples, re.MULTILINE)
    assert len(found) >= 10, found
    return found


@pytest.mark.parametrize("description", endpointExamples())
def test_endpoint_examples_are_accepted(
    description: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Client examples parse as clients, server examples (after the blank line)
    as servers; the files they name are made here (or in C{tmp_path}).
    """
    monkeypatch.setenv("MASSE_REGISTRY", "memory://")
    authority = Authority.create(tmp_path)
    cert, key = authority.issue("db.prod")
    both = tmp_path / "db.prod.pem"
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    written = description
    description = description.replace("/etc/masse/ca.pem", str(authority.caPath))
    description = description.replace("/etc/masse/db.prod.pem", str(both))
    description = description.replace("/tmp/masse.db", f"{tmp_path}/masse.db")
    examples = section(DOCS / "endpoints.md", "## Examples")
    blocks = [block for block in examples.split("\n\n") if block.startswith("    masse:")]
    assert len(blocks) == 2, "docs/endpoints.md: client examples, a blank line, server examples"
    clients, servers = blocks
    if written in clients:
        endpoint = clientFromString(reactor, description)
    else:
        assert written in servers
        endpoint = serverFromString(reactor, description)
    assert type(endpoint).__module__.startswith("txmasse")


class Line(LineReceiver):
    delimiter = b"\n"

    def connectionMade(self) -> None:
        self.lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)


def ipv6Examples() -> list[str]:
    """
    The IPv6 listening examples of docs/endpoints.md, as written.
    """
    found = re.findall(r"^    (masse:\S+)", section(DOCS / "endpoints.md", "## Escaping"), re.M)
    assert len(found) == 2 and all(r"\:\:1" in example for example in found), found
    return found


async def servedOverIPv6(description: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Listen with C{description}, find the address published, connect to it
    by name and have a line echoed.
    """
    monkeypatch.setenv("MASSE_REGISTRY", "memory://")
    registry = registryFromURL(reactor)
    port = await serverFromString(reactor, description).listen(Factory.forProtocol(Echo))
    try:
        [record] = await registry.lookup("default", "db")
        assert re.fullmatch(r"tcp:host=\\:\\:1:port=\d+", record.endpoints[0]), record
        protocol = await clientFromString(reactor, "masse:db").connect(Factory.forProtocol(Line))
        assert protocol.transport.getPeer().host == "::1"
        protocol.sendLine(b"hello over IPv6")
        await eventually(lambda: protocol.lines)
        assert protocol.lines == [b"hello over IPv6"]
        protocol.transport.loseConnection()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_ipv6_shorthand_example_works(monkeypatch: pytest.MonkeyPatch) -> None:
    await servedOverIPv6(ipv6Examples()[1], monkeypatch)


@pytest_twisted.ensureDeferred
async def test_ipv6_listen_example_works(monkeypatch: pytest.MonkeyPatch) -> None:
    await servedOverIPv6(ipv6Examples()[0], monkeypatch)
