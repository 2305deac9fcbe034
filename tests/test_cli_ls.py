"""
C{masse ls} shows a published AMP schema as the names of its commands,
not as the JSON it travels as; C{--json} keeps the metadata whole.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor
from twisted.protocols import amp

from tests.helpers import masse, record
from txmasse.registry import registryFromURL
from txmasse.rpc.schema import describeCommands, schemaMetadata


class Greet(amp.Command):
    arguments = [(b"name", amp.Unicode())]
    response = [(b"greeting", amp.Unicode())]


class Shout(amp.Command):
    arguments = [(b"text", amp.Unicode())]
    response = [(b"text", amp.Unicode())]


@pytest_twisted.ensureDeferred
async def test_ls_names_the_commands_a_peer_publishes(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/registry.db"
    registry = registryFromURL(reactor, url)
    metadata = {"zone": "a", **schemaMetadata(describeCommands([Greet, Shout]))}
    lease = await registry.register(record("greeter", metadata=metadata), 30)
    try:
        listing = masse("ls", registry=url)
        assert listing.returncode == 0, listing.stderr
        [row] = listing.stdout.splitlines()[1:]
        assert row.endswith("  zone=a amp.commands=Greet,Shout"), row
        assert '{"c"' not in row  # not the JSON
        whole = json.loads(masse("ls", "--json", registry=url).stdout)
        assert whole[0]["metadata"] == metadata
    finally:
        await lease.release()
        await registry.close()


def test_a_reader_that_goes_away_ends_masse_quietly() -> None:
    """
    C{masse completion bash | head -1}: once the reader has gone, masse
    ends without an error message, as Unix tools do.
    """
    read, write = os.pipe()
    os.close(read)  # the reader is gone before masse writes a byte
    try:
        done = subprocess.run(
            [sys.executable, "-m", "txmasse", "completion", "bash"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )
    finally:
        os.close(write)
    assert done.stderr == "" and done.returncode == 141, done
