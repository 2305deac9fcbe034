"""
The masse: prefix works once txmasse is installed, from any directory.

Builds the package with pip into a fresh virtualenv (no repository on the
path), then connects and listens by name in a process started elsewhere;
runs the README's C{twistd -ny examples/peers.tac} from the checkout; then
installs it again with a plain C{pip install -e .} and checks the same from
elsewhere. The test environment's own packages (Twisted, txredisapi...) are
reused through a .pth file instead of being installed again, to stay quick.
Processes run with C{python -P}: the current directory is not importable,
as with the C{twistd} and C{masse} scripts.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import copySource

TWISTD = ("-P", "-c", "from twisted.scripts.twistd import run; run()")  # as the twistd script

ROUND_TRIP = textwrap.dedent(
    r"""
    import sys

    import txmasse
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import clientFromString, serverFromString
    from twisted.internet.protocol import Factory, Protocol

    assert txmasse.__file__.startswith(sys.argv[1]), txmasse.__file__

    class Echo(Protocol):
        def dataReceived(self, data):
            self.transport.write(data)

    class Hello(Protocol):
        def connectionMade(self):
            self.transport.write(b"hello by name")

        def dataReceived(self, data):
            print(data.decode(), flush=True)
            self.transport.loseConnection()
            reactor.stop()

    async def main():
        registry = r"registry=memory\://"
        server = serverFromString(reactor, f"masse:echo:ns=t:{registry}:interface=127.0.0.1")
        await server.listen(Factory.forProtocol(Echo))
        client = clientFromString(reactor, f"masse:name=echo:ns=t:{registry}:timeout=5")
        await client.connect(Factory.forProtocol(Hello))

    def failed(failure):
        print(failure.getTraceback(), file=sys.stderr)
        reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(main()).addErrback(failed))
    reactor.callLater(20, reactor.stop)
    reactor.run()
    """
)


def runsTheTac(python: Path, checkout: Path, env: dict[str, str]) -> None:
    """
    C{twistd -ny examples/peers.tac} from the checkout: its peers listen.
    """
    process = subprocess.Popen(
        [str(python), *TWISTD, "-ny", "examples/peers.tac", "--pidfile="],
        cwd=checkout,
        env={**env, "MASSE_REGISTRY": "memory://"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if "default/greeter is listening" in line:
                break
    finally:
        process.kill()
        process.wait()
    assert "default/greeter is listening" in seen[-1], "".join(seen[-20:])


def test_pip_install_provides_the_masse_prefix(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    [sitePackages] = (venv / "lib").glob("python*/site-packages")
    (sitePackages / "_txmasse_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    source = tmp_path / "source"
    source.mkdir()
    copySource(source)
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    install = subprocess.run(
        [*pip, "install", "--quiet", "--no-deps", str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert (sitePackages / "twisted" / "plugins" / "txmasse_plugins.py").exists()
    assert not (sitePackages / "twisted" / "plugins" / "__init__.py").exists()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MASSE_REGISTRY")}
    run = subprocess.run(
        [str(python), "-P", "-c", ROUND_TRIP, str(sitePackages)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.stdout == "hello by name\n", run.stdout + run.stderr
    runsTheTac(python, source, env)

    # A plain editable install: masse:, twistd masse and masse, from elsewhere
    editable = subprocess.run(
        [*pip, "install", "--quiet", "--no-deps", "-e", str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert editable.returncode == 0, editable.stdout + editable.stderr
    again = subprocess.run(
        [str(python), "-P", "-c", ROUND_TRIP, str(source)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.stdout == "hello by name\n", again.stdout + again.stderr
    twistd = subprocess.run(
        [str(python), *TWISTD, "masse", "--help"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "--unix=" in twistd.stdout, twistd.stdout + twistd.stderr
    version = subprocess.run(
        [str(venv / "bin" / "masse"), "--version"], cwd=elsewhere, env=env, capture_output=True
    )
    assert version.stdout.startswith(b"masse (txmasse) "), version
