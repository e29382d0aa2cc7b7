"""The test kit's fault-injecting TCP proxy: its arithmetic, then the proxy in front of a real
TCP server (a sink that counts what it received and a source that streams on demand)."""

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from rawdrive_platform.devstack.faultproxy import FaultProxy, Faults, allowance, transfer_time_s


def test_no_cut_lets_every_byte_pass():
    assert allowance(Faults(), 10**9, 65536) == (65536, False)


def test_the_cut_passes_only_the_bytes_left_and_then_cuts():
    faults = Faults(cut_after_bytes=100)
    assert allowance(faults, 0, 60) == (60, False)
    assert allowance(faults, 60, 60) == (40, True)
    assert allowance(faults, 100, 60) == (0, True)


def test_a_chunk_ending_exactly_at_the_limit_cuts():
    assert allowance(Faults(cut_after_bytes=100), 40, 60) == (60, True)


def test_transfer_time_follows_the_bandwidth_cap():
    assert transfer_time_s(Faults(), 10**9) == 0.0
    assert transfer_time_s(Faults(bandwidth_bytes_s=1000), 500) == 0.5


class Sink:
    """A TCP server that reads each connection to its end; `received` is what each one got.
    A request line starting with `SEND n` makes it answer n bytes instead."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received: list[int] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        total, first = 0, b""
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                if not first:
                    first = data
                    if first.startswith(b"SEND "):
                        conn.sendall(b"x" * int(first.split()[1]))
                        conn.shutdown(socket.SHUT_WR)
                total += len(data)
        self.received.append(total)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    sink = Sink()
    yield sink
    sink.close()


@pytest.fixture
def proxy(sink) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream_port=sink.port)
    proxy.start()
    yield proxy
    proxy.stop()


def send(port: int, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass


def wait_for(predicate, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_without_faults_every_byte_arrives(sink, proxy):
    send(proxy.port, b"a" * 1_000_000)
    wait_for(lambda: sink.received)
    assert sink.received == [1_000_000]
    assert proxy.stats.connections == 1 and proxy.stats.cuts == 0


def test_a_connection_is_cut_after_exactly_n_bytes_and_the_next_one_gets_a_fresh_allowance(sink, proxy):
    proxy.set_faults(Faults(cut_after_bytes=300_000))
    for _ in range(2):
        with pytest.raises(OSError):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as conn:
                for _ in range(100):  # 6.4 MB: far past the allowance, so the cut must hit us
                    conn.sendall(b"b" * 65536)
                    time.sleep(0.001)
                conn.shutdown(socket.SHUT_WR)
                if not conn.recv(1):  # the proxy closed before we finished: also a cut seen
                    raise ConnectionResetError("closed by the proxy")
    wait_for(lambda: len(sink.received) == 2)
    assert sink.received == [300_000, 300_000]
    assert proxy.stats.cuts == 2


def test_latency_delays_the_answer(sink, proxy):
    proxy.set_faults(Faults(latency_s=0.3))
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as conn:
        conn.sendall(b"SEND 10\n")
        assert conn.recv(10)
    # One way out and one way back, each held 0.3 s.
    assert time.monotonic() - started >= 0.6


def test_the_bandwidth_cap_paces_a_download(sink, proxy):
    proxy.set_faults(Faults(bandwidth_bytes_s=1_000_000))
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as conn:
        conn.sendall(b"SEND 500000\n")
        got = 0
        while chunk := conn.recv(65536):
            got += len(chunk)
    elapsed = time.monotonic() - started
    assert got == 500_000
    assert elapsed >= 0.4  # 0.5 s at the cap, less the first chunk's own pacing slack


def test_disable_cuts_open_connections_and_refuses_new_ones_until_enabled(sink, proxy):
    held = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    held.sendall(b"hello")
    wait_for(lambda: proxy.stats.connections == 1)
    proxy.disable()
    assert held.recv(1) == b""  # closed under us
    held.close()
    refused = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    assert refused.recv(1) == b""
    refused.close()
    assert proxy.stats.refused == 1
    proxy.enable()
    send(proxy.port, b"c" * 1000)
    wait_for(lambda: 1000 in sink.received)
