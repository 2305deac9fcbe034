"""
Registries as plugins: a scheme added by a package (the example in
examples/static_registry) works wherever txmasse takes a registry URL, its
errors hide passwords, and it passes the contract suite the built-in
registries pass; installed in a fresh virtualenv it is found by its entry
point, from endpoint strings, C{masse} and C{twistd masse}.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint, clientFromString, quoteStringArgument
from twisted.internet.protocol import Factory

from tests.endpoint_helpers import REPO, Collector, Echo
from tests.helpers import FreshVenv
from txmasse.contract import *  # noqa: F403 (the contract, run over the plugin's registry)
from txmasse.registry import parseRegistryURL, registryFromURL
from txmasse.registry.plugins import registerScheme

EXAMPLE = REPO / "examples" / "static_registry"
def loadExample() -> ModuleType:
    spec = importlib.util.spec_from_file_location("masse_static", EXAMPLE / "masse_static.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def static() -> ModuleType:
    module = loadExample()
    registerScheme(module.scheme)
    return module


def peersFile(directory: Path, *peers: dict[str, Any]) -> Path:
    path = directory / "peers.json"
    path.write_text(json.dumps(list(peers)))
    return path


@pytest.fixture
def make_registry(tmp_path: Path) -> Iterator[Any]:
    """
    The contract's registries: one static registry, shared, as one process's.
    """
    url = f"static://{peersFile(tmp_path)}"
    made: list[Any] = []

    def make() -> Any:
        if not made:
            made.append(registryFromURL(reactor, url))
        return made[0]

    yield make
    for registry in made:
        pytest_twisted.blockon(registry.close())


@pytest_twisted.ensureDeferred
async def test_a_plugin_scheme_connects_by_name_from_an_endpoint_string(tmp_path: Path) -> None:
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(Echo)
    )
    try:
        number = port.getHost().port
        path = peersFile(
            tmp_path,
            {"namespace": "t", "name": "echo", "endpoints": [f"tcp:host=127.0.0.1:port={number}"]},
            {"namespace": "t", "name": "bad name", "endpoints": []},  # skipped, with a warning
        )
        url = f"static://{path}"
        registry = registryFromURL(reactor, url)
        [record] = await registry.lookup("t", "echo")
        assert record.endpoints == (f"tcp:host=127.0.0.1:port={number}",)
        client = clientFromString(
            reactor, f"masse:echo:ns=t:registry={quoteStringArgument(url)}:timeout=5"
        )
        protocol = await client.connect(Factory.forProtocol(Collector))
        assert isinstance(protocol, Collector)
        protocol.transport.loseConnection()  # type: ignore[union-attr]
        await registry.close()
    finally:
        await port.stopListening()


def test_plugin_urls_are_checked_and_their_passwords_hidden() -> None:
    with pytest.raises(ValueError, match="use static:///ABSOLUTE/PATH") as caught:
        parseRegistryURL("static://admin:hunter2@host/x")
    assert "hunter2" not in str(caught.value) and "admin:***@" in str(caught.value)
    with pytest.raises(ValueError, match="option 'colour' is unknown"):
        parseRegistryURL("static:///x?colour=red")
    with pytest.raises(ValueError, match=r"scheme 'nosuch' is not one of .*static"):
        parseRegistryURL("nosuch://x")
    assert parseRegistryURL("static:///x?secrets=/s").secrets == "/s"  # signing works too


def test_a_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"static://{tmp_path}/none.json: cannot read it"):
        registryFromURL(reactor, f"static://{tmp_path}/none.json")


def test_installed_in_a_fresh_venv_it_is_found_by_its_entry_point(tmp_path: Path) -> None:
    venv = FreshVenv.create(tmp_path, EXAMPLE)
    path = peersFile(
        tmp_path, {"namespace": "dev", "name": "db", "endpoints": ["tcp:host=10.0.0.7:port=5432"]}
    )
    url = f"static://{path}"
    bin = venv.python.parent
    listing = venv.run(str(bin / "masse"), "--registry", url, "--ns", "dev", "resolve", "db")
    assert listing.returncode == 0, listing.stdout + listing.stderr
    assert "tcp:host=10.0.0.7:port=5432" in listing.stdout
    # txmasse's own etcd:// comes the same way, by its entry point.
    etcd = venv.run(str(bin / "masse"), "--registry", "etcd://127.0.0.1:1?timeout=1", "ls")
    assert etcd.returncode == 1 and "etcd://127.0.0.1:1" in etcd.stderr, etcd
    assert "is not one of" not in etcd.stderr
    with venv.twistdMasse(
        "--registry", url, "--name", "web", "--ns", "dev",
        "--factory", "twisted.protocols.wire:Echo",
    ) as (_, line):  # fmt: skip
        assert "listening as dev/web" in line and "registry static://" in line, line
