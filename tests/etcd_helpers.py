"""
etcd members of the tests' own (Debian's etcd-server), on free loopback
ports: one alone, or three in a cluster that tests may kill, pause and
restart.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bench.etcd import freePorts

INSTALL_HINT = (
    "etcd is not installed: the etcd tests need it. Install it with "
    "'apt-get install -y etcd-server' (tests/run.sh does this), or put an etcd on PATH."
)


def etcdExecutable() -> str:
    executable = shutil.which("etcd")
    if executable is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return executable


def gateway(
    port: int,
    path: str,
    body: dict[str, Any],
    timeout: float = 5,
    ca: Path | None = None,
    token: str | None = None,
    clientCert: tuple[Path, Path] | None = None,
) -> Any:
    """
    One call to a member's JSON gateway (blocking; test use only), over
    TLS checked against C{ca} if given.
    """
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = token
    request = urllib.request.Request(
        f"{'https' if ca else 'http'}://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers=headers,
    )
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    if context is not None and clientCert is not None:
        context.load_cert_chain(str(clientCert[0]), str(clientCert[1]))
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        return json.loads(response.read())


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


class EtcdMember:
    """
    One etcd process with its data directory and ports.
    """

    def __init__(
        self,
        directory: Path,
        name: str,
        clientPort: int,
        peerPort: int,
        tls: tuple[Path, Path, Path] | None = None,
        extraArgs: tuple[str, ...] = (),
        clientCert: tuple[Path, Path] | None = None,
    ):
        self.tls = tls  # certificate, key, and the CA that signed them
        self.extraArgs = extraArgs
        self.clientCert = clientCert  # what the helper's own calls show, if asked
        self.directory = directory
        self.name = name
        self.clientPort = clientPort
        self.peerPort = peerPort
        self.process: subprocess.Popen[bytes] | None = None
        self.cluster = f"{name}=http://127.0.0.1:{peerPort}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.clientPort}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.directory / "etcd.log", "ab")
        client = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.clientPort}"
        tlsArgs = (
            ("--cert-file", str(self.tls[0]), "--key-file", str(self.tls[1])) if self.tls else ()
        )
        peer = f"http://127.0.0.1:{self.peerPort}"
        self.process = subprocess.Popen(
            [
                etcdExecutable(),
                "--name",
                self.name,
                "--data-dir",
                str(self.directory / "data"),
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                self.cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "txmasse-tests",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                "--logger",
                "zap",
                "--log-level",
                "warn",
                "--log-outputs",
                "stderr",
                *tlsArgs,
                *self.extraArgs,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        """
        SIGSTOP, and wait until every thread has stopped.
        """
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        tasks = Path(f"/proc/{self.process.pid}/task")

        def running(task: Path) -> bool:
            try:
                return (task / "stat").read_text().rpartition(")")[2].split()[0] not in "Tt"
            except OSError:  # the thread is gone
                return False

        deadline = time.monotonic() + 5
        while self.process.poll() is None and any(running(task) for task in tasks.iterdir()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd {self.name} did not stop")
            time.sleep(0.001)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def status(self) -> Any:
        return gateway(
            self.clientPort, "/v3/maintenance/status", {}, 1, self.ca, clientCert=self.clientCert
        )

    @property
    def ca(self) -> Path | None:
        return self.tls[2] if self.tls else None

    def healthy(self) -> bool:
        """
        Whether this member serves linearizable reads (it has a leader).
        """
        try:
            gateway(
                self.clientPort,
                "/v3/kv/range",
                {"key": b64("health")},
                1,
                self.ca,
                clientCert=self.clientCert,
            )
        except urllib.error.HTTPError as e:
            return e.code == 401  # auth enabled: it answers
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return True


class EtcdCluster:
    """
    C{size} members on loopback; a cluster of one serves the contract tests.
    """

    def __init__(
        self,
        directory: Path,
        size: int = 1,
        tls: tuple[Path, Path, Path] | None = None,
        extraArgs: tuple[str, ...] = (),
        clientCert: tuple[Path, Path] | None = None,
    ):
        etcdExecutable()
        ports = freePorts(2 * size)
        self.members = [
            EtcdMember(
                directory / f"m{i}",
                f"m{i}",
                ports[2 * i],
                ports[2 * i + 1],
                tls,
                extraArgs,
                clientCert,
            )
            for i in range(size)
        ]
        self.tls = tls
        cluster = ",".join(member.cluster for member in self.members)
        for member in self.members:
            member.cluster = cluster

    @property
    def url(self) -> str:
        scheme = "etcds" if self.tls else "etcd"
        return f"{scheme}://" + ",".join(member.address for member in self.members)

    def start(self) -> None:
        for member in self.members:
            if member.process is None:
                member.start()
        self.waitHealthy()

    def waitHealthy(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        for member in self.members:
            while not member.healthy():
                if member.process is not None and member.process.poll() is not None:
                    log = (member.directory / "etcd.log").read_text()[-2000:]
                    raise RuntimeError(f"etcd {member.name} exited: {log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd {member.name} not healthy within {timeout}s")
                time.sleep(0.05)

    def stop(self) -> None:
        for member in self.members:
            member.kill()

    def leaderNow(self) -> EtcdMember | None:
        """
        The member that leads, if the running members agree on one.
        """
        try:
            statuses = [(m, m.status()) for m in self.members if m.process]
        except (OSError, ValueError):
            return None
        ids = {status["header"]["member_id"]: m for m, status in statuses}
        leaders = {status.get("leader") for _, status in statuses}
        if len(leaders) == 1 and (leader := leaders.pop()) in ids:
            return ids[leader]
        return None

    def leader(self) -> EtcdMember:
        """
        The member that leads now (waiting, blocking, for one).
        """
        deadline = time.monotonic() + 10
        while True:
            leader = self.leaderNow()
            if leader is not None:
                return leader
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster agrees on no leader")
            time.sleep(0.05)

    def call(self, path: str, body: dict[str, Any]) -> Any:
        """
        A gateway call on the first running member.
        """
        member = next(m for m in self.members if m.process)
        return gateway(member.clientPort, path, body, ca=member.ca)

    def revision(self) -> int:
        return int(self.call("/v3/kv/range", {"key": b64("revision")})["header"]["revision"])

    def put(self, key: str, value: bytes | str) -> None:
        self.call("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    def keys(self, prefix: str) -> dict[str, Any]:
        """
        Every key under C{prefix}, with its value decoded and its lease id.
        """
        port = next(m.clientPort for m in self.members if m.process)
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        reply = gateway(port, "/v3/kv/range", {"key": b64(prefix), "range_end": b64(end)})
        return {
            base64.b64decode(kv["key"]).decode(): (
                base64.b64decode(kv.get("value", "")),
                kv.get("lease"),
            )
            for kv in reply.get("kvs", [])
        }
