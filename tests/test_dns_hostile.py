"""
C{masse dns} against what the network may send: random and mangled
packets over UDP and TCP (hypothesis), after which it still answers, and
bad command lines; and C{twistd masse-dns}, the same server as a service.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.names import dns

from tests.conftest import RedisServer, freePort
from tests.dns_helpers import addresses
from tests.endpoint_helpers import REPO, peerEnvironment


def masse(url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "txmasse", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**peerEnvironment(url), "MASSE_NAMESPACE": "fz"},
        cwd=REPO,
    )


def waitFor(process: subprocess.Popen[str], text: str, timeout: float = 30) -> str:
    """
    The process's output up to the end of the line holding C{text}.
    """
    assert process.stdout is not None
    fd, output = process.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while text.encode() not in output or not output.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0, deadline - time.monotonic()))
        chunk = os.read(fd, 4096) if ready else b""
        assert chunk, f"no {text!r} from {process.args!r}: {output.decode()}"
        output += chunk
    return output.decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    redis = RedisServer(tmp_path_factory.mktemp("redis"))
    redis.start()
    url = f"{redis.url}?timeout=2"
    peer = masse(url, "register", "db", "--endpoint", "tcp:host=10.0.0.1:port=1")
    dnsProcess = masse(url, "dns", "--listen", "0")
    try:
        waitFor(peer, "registered")
        words = waitFor(dnsProcess, "masse dns: answering").split()
        yield int(words[words.index("port") + 1])
        assert dnsProcess.poll() is None, "masse dns exited"
    finally:
        for process in (dnsProcess, peer):
            process.kill()
            _, err = process.communicate()
            assert "Traceback" not in err, err
        redis.stop()


def query(name: bytes, type: int = dns.A, id: int = 4242) -> bytes:
    message = dns.Message(id=id)
    message.queries = [dns.Query(name, type)]
    return message.toStr()


def answered(port: int, tcp: socket.socket | None = None) -> dns.Message:
    """
    A real question after the garbage: answered, over UDP or on C{tcp}.
    """
    asked = query(b"db.fz.masse")
    if tcp is None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(5)
            udp.sendto(asked, ("127.0.0.1", port))
            return _replyTo(asked, udp.recv)
    tcp.settimeout(5)
    tcp.sendall(struct.pack("!H", len(asked)) + asked)

    def frame(_: int) -> bytes:
        size = struct.unpack("!H", tcp.recv(2, socket.MSG_WAITALL))[0]
        return tcp.recv(size, socket.MSG_WAITALL)

    return _replyTo(asked, frame)


def _replyTo(asked: bytes, receive: Callable[[int], bytes]) -> dns.Message:
    """
    The reply to C{asked}: same id and question (replies to garbage sent
    before it may come first).
    """
    while True:
        message = dns.Message()
        message.fromStr(receive(4096))
        if message.id == 4242 and message.queries == [dns.Query(b"db.fz.masse")]:
            return message


def wire(labels: list[bytes]) -> bytes:
    return b"".join(bytes([len(label) & 0xFF]) + label for label in labels) + b"\x00"


header = st.builds(
    struct.pack,
    st.just("!HHHHHH"),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 3),
)
question = st.builds(
    lambda labels, type, cls: wire(labels) + struct.pack("!HH", type, cls),
    st.lists(
        st.one_of(
            st.sampled_from([b"db", b"fz", b"masse", b"_tcp", b"_db", b"DB", b"x" * 63]),
            st.binary(max_size=70),
        ),
        max_size=8,
    ),
    st.sampled_from([1, 28, 33, 16, 255, 252, 251, 6, 2, 0, 65535]) | st.integers(0, 0xFFFF),
    st.sampled_from([1, 3, 255, 254]) | st.integers(0, 0xFFFF),
)
packets = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda h, q, tail: h + q + tail, header, question, st.binary(max_size=40)),
    st.builds(
        lambda q, cut: q[:cut], st.builds(query, st.just(b"db.fz.masse")), st.integers(0, 40)
    ),
)


def test_random_packets_over_udp(server: int) -> None:
    """
    Each packet from a socket of its own, none waited for; then a real
    question is answered, and the replies that came are read: each a
    well-formed DNS response to its packet, within 512 bytes.
    """
    sent: list[tuple[socket.socket, bytes]] = []

    @settings(max_examples=300, deadline=None)
    @given(packet=packets)
    def send(packet: bytes) -> None:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.sendto(packet, ("127.0.0.1", server))
        sent.append((udp, packet))

    send()
    assert addresses(answered(server)) == ["10.0.0.1"]
    replies = 0
    for udp, packet in sent:
        ready, _, _ = select.select([udp], [], [], 0)
        if ready:  # else silence: a fine answer to garbage
            reply = udp.recv(4096)
            message = dns.Message()
            message.fromStr(reply)
            assert message.answer and reply[:2] == packet[:2] and len(reply) <= 512
            replies += 1
        udp.close()
    assert len(sent) == 300 and 50 < replies < 300, replies


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frames=st.lists(packets, min_size=1, max_size=5))
def test_random_messages_over_tcp(server: int, frames: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=5) as tcp:
        tcp.sendall(b"".join(struct.pack("!H", len(frame)) + frame for frame in frames))
        assert addresses(answered(server, tcp)) == ["10.0.0.1"]


def test_bad_command_lines() -> None:
    url = "memory://"
    for args, part in [
        (["--ttl", "soon"], "--ttl 'soon'"),
        (["--listen", "99999"], "--listen '99999'"),
        (["--domain", "a..b"], "bad label ''"),
        (["--interface", "nowhere"], "--interface 'nowhere'"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "txmasse", "--registry", url, "dns", *args],
            capture_output=True,
            text=True,
            env=peerEnvironment(url),
            timeout=30,
        )
        assert (done.returncode, done.stdout) == (2, ""), done.stderr
        assert part in done.stderr and len(done.stderr.splitlines()) == 1


def test_port_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "txmasse",
                "--registry",
                "memory://",
                "dns",
                "--listen",
                str(port),
            ],
            capture_output=True,
            text=True,
            env=peerEnvironment("memory://"),
            timeout=30,
        )
    assert done.returncode == 1
    assert f"masse: cannot listen on 127.0.0.1 port {port}" in done.stderr


TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def test_twistd_masse_dns(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)
    redis.start()
    port = freePort()
    twistd = subprocess.Popen(
        [*TWISTD, "--nodaemon", "--pidfile=", "masse-dns", "--registry", redis.url,
         "--listen", str(port), "--domain", "corp.example"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=peerEnvironment(redis.url),
        cwd=tmp_path,
    )  # fmt: skip
    try:
        waitFor(twistd, "masse dns: answering")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(5)
            udp.sendto(query(b"db.fz.corp.example"), ("127.0.0.1", port))
            reply = dns.Message()
            reply.fromStr(udp.recv(4096))
        assert reply.rCode == dns.ENAME and [r.type for r in reply.authority] == [dns.SOA]
    finally:
        twistd.terminate()
        out, _ = twistd.communicate(timeout=30)
        redis.stop()
    assert "Traceback" not in out, out
