"""
A real headless Chromium, driven over the DevTools protocol on a pipe
(C{--remote-debugging-pipe}: no WebSocket client needed), for the dashboard
tests and the README's screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

CHROMIUM = "/usr/bin/chromium"
T = TypeVar("T")


class BrowserError(Exception):
    pass


class Browser:
    """
    One Chromium process with one page; L{evaluate} runs JavaScript in it.
    """

    def __init__(self, width: int = 1280, height: int = 800):
        if not os.access(CHROMIUM, os.X_OK):
            raise BrowserError(
                f"{CHROMIUM} is missing: install Debian's chromium package "
                "(apt-get install chromium; tests/run.sh does it)"
            )
        self._profile = tempfile.mkdtemp(prefix="masse-chromium-")
        toBrowser, self._toBrowser = os.pipe()  # fd 3 in the child: what it reads
        self._fromBrowser, fromBrowser = os.pipe()  # fd 4 in the child: what it writes

        def pipes() -> None:
            # Out of the way first: either end may be fd 3 or 4 already.
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (toBrowser, fromBrowser)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--remote-debugging-pipe",
                f"--user-data-dir={self._profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=pipes,
            pass_fds=(3, 4),
        )
        os.close(toBrowser)
        os.close(fromBrowser)
        self._buffer = b""
        self._next = 0
        self._events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            session=True,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def call(self, method: str, session: bool = False, timeout: float = 30.0, **params: Any) -> Any:
        """
        Send one DevTools command; return its result.
        """
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._toBrowser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)
            del self._events[:-1000]

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._fromBrowser], [], [], left)[0]:
                raise BrowserError("no answer from Chromium in time")
            data = os.read(self._fromBrowser, 1 << 20)
            if not data:
                raise BrowserError(f"Chromium exited (status {self.process.poll()})")
            self._buffer += data
        message, self._buffer = self._buffer.split(b"\0", 1)
        reply: dict[str, Any] = json.loads(message)
        return reply

    def open(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)

    def evaluate(self, expression: str) -> Any:
        """
        The value of a JavaScript expression in the page (JSON-able).
        """
        result = self.call(
            "Runtime.evaluate",
            session=True,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def waitFor(
        self,
        expression: str,
        predicate: Callable[[Any], bool],
        what: str,
        timeout: float = 15.0,
    ) -> Any:
        """
        Evaluate C{expression} until C{predicate} holds for its value (every
        50 ms, at most C{timeout} seconds); return that value.
        """
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except BrowserError:
                value = None  # the page is loading
            if value is not None and predicate(value):
                return value
            time.sleep(0.05)
        raise AssertionError(f"the page never showed {what}; last seen: {value!r}")

    def screenshot(self, path: str) -> None:
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (BrowserError, OSError):
            pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._toBrowser)
        os.close(self._fromBrowser)
        shutil.rmtree(self._profile, ignore_errors=True)
