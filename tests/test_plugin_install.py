"""
The masse: prefix works once txmasse is installed, from any directory.

Builds the package with pip into a fresh virtualenv (no repository on the
path), then connects and listens by name in a process started elsewhere.
The test environment's own packages (Twisted, txredisapi...) are reused
through a .pth file instead of being installed again, to stay quick.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import copySource

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
        [str(python), "-c", ROUND_TRIP, str(sitePackages)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.stdout == "hello by name\n", run.stdout + run.stderr
