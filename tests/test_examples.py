"""
Every example runs as its docstring says.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RedisServer

ROOT = Path(__file__).parent.parent


def run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
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
