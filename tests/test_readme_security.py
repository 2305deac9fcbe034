"""
The security page (docs/security.md, where the README's Security section
moved), run as written: its shell session for signed records and peer TLS,
and its ACL line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.certs import Authority
from tests.helpers import MASSE_ACL, RedisServer

ROOT = Path(__file__).parent.parent
SECURITY = (ROOT / "docs" / "security.md").read_text()
SESSION_REDIS = "redis://127.0.0.1:6379/0"


def securitySession() -> str:
    """
    The security page's shell block that follows "Signed records and peer TLS
    together".
    """
    section = SECURITY[SECURITY.index("Signed records and peer TLS together") :]
    found = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert found is not None, "docs/security.md lost its signed + TLS session"
    return found.group(1)


def test_documented_acl_line_is_the_one_tested() -> None:
    assert f"ACL SETUSER masse on >PASSWORD {MASSE_ACL}" in SECURITY


def test_signed_and_tls_session_works_as_written(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """
    Certificates made with openssl, a secrets file, a TLS peer under twistd,
    clients through the masse command: the real peer answers, the impostor
    without the secret is listed as rejected and never reached.
    """
    assert shutil.which("openssl"), "openssl is needed by docs/security.md's session"
    script = securitySession()
    assert SESSION_REDIS in script
    script = script.replace(SESSION_REDIS, redis_server.url)
    # The session's own waits are unbounded loops: bound the whole session.
    bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": "",
    }
    env.pop("MASSE_REGISTRY", None)
    env.pop("MASSE_SECRETS", None)
    result = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout
    assert result.returncode == 0, (out, result.stderr[-3000:])
    lines = out.splitlines()
    assert any(re.fullmatch(r"tls:host=[0-9.]+:port=\d+", line) for line in lines), out
    assert lines.count("hello") == 2, out
    rejected = [line for line in lines if "REJECTED" in line]
    assert len(rejected) == 1 and "REJECTED: no signature" in rejected[0], out
    assert "tcp:host=127.0.0.1:port=9" in rejected[0], out
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def refusedTwistdMasse(directory: Path, *options: str) -> str:
    """
    Run C{twistd masse} serving an echo as C{echo}, which must refuse
    C{options} with a usage message, not a traceback; return its output.
    """
    twistd = Path(sys.executable).parent / "twistd"
    result = subprocess.run(
        [
            str(twistd), "-n", "masse", "--name", "echo", "--ns", "default",
            "--factory", "twisted.protocols.wire:Echo", *options,
        ],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    return output


@pytest.mark.parametrize("option", ["--cert", "--key", "--ca"])
def test_twistd_masse_tls_options_are_checked(option: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    output = refusedTwistdMasse(tmp_path, option, missing)
    if option == "--cert":
        assert f"--cert {missing}: cannot read it" in output
    else:
        assert "--key and --ca need --cert" in output


def test_twistd_masse_refuses_a_certificate_for_another_name(tmp_path: Path) -> None:
    cert, key = Authority.create(tmp_path).issue("other.default")
    output = refusedTwistdMasse(tmp_path, "--cert", str(cert), "--key", str(key))
    assert "its certificate is for 'other.default', not 'echo.default'" in output
