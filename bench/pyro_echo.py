"""
The Pyro5 side of the connect figure: an echo object registered in a Pyro5
name server as C{bench.echo}. Run as C{python -m bench.pyro_echo NSPORT};
prints C{ready} once registered. The bench starts the name server itself
(C{python -m Pyro5.nameserver}).
"""

from __future__ import annotations

import importlib
import sys
import time
from typing import Any


def main(nsPort: int) -> None:
    api: Any = importlib.import_module("Pyro5.api")

    @api.expose
    class Echo:
        def echo(self, data: str) -> str:
            return data

    daemon = api.Daemon(host="127.0.0.1")
    uri = daemon.register(Echo)
    deadline = time.monotonic() + 30
    while True:
        try:
            api.locate_ns(host="127.0.0.1", port=nsPort).register("bench.echo", uri)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    print("ready", flush=True)
    daemon.requestLoop()


if __name__ == "__main__":
    main(int(sys.argv[1]))
