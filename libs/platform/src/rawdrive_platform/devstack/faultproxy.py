"""A fault-injecting TCP proxy for tests, in the spirit of Toxiproxy: latency, a bandwidth cap,
connections cut after N bytes, and a switch that cuts every connection and refuses new ones.

The faults are one frozen `Faults` value, swapped at any time with `set_faults`; each connection
reads it when bytes move, so a change applies at once. The proxy runs its own event loop in a
thread, so it keeps forwarding whatever the caller's loop (or a blocking test) is doing; every
method is safe to call from any thread.

    proxy = FaultProxy(upstream_port=8080)
    proxy.start()                                # listens on proxy.port
    proxy.set_faults(Faults(latency_s=0.05, bandwidth_bytes_s=1_000_000, cut_after_bytes=3 << 20))
    proxy.disable()                              # cut everything, refuse new connections
    proxy.enable()
    proxy.stop()
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import msgspec

from rawdrive_platform.devstack.servers import LOOPBACK, free_port

CHUNK_BYTES = 64 * 1024


class Faults(msgspec.Struct, frozen=True, kw_only=True):
    """What the link does to the bytes. The defaults forward them untouched."""

    latency_s: float = 0.0  # added to every chunk, each direction
    bandwidth_bytes_s: int | None = None  # per connection and direction
    # Close the connection (both sides, no goodbye) once this many bytes went client -> upstream;
    # every new connection gets the full allowance again.
    cut_after_bytes: int | None = None


# ---------------------------------------------------------------------------------------------
# The pure core


def allowance(faults: Faults, sent_upstream: int, chunk: int) -> tuple[int, bool]:
    """How many of `chunk` new client bytes may pass after `sent_upstream`, and whether the
    connection is to be cut after them."""
    if faults.cut_after_bytes is None:
        return chunk, False
    left = max(faults.cut_after_bytes - sent_upstream, 0)
    return min(chunk, left), chunk >= left


def transfer_time_s(faults: Faults, nbytes: int) -> float:
    """How long `nbytes` take on the link, after its latency."""
    if faults.bandwidth_bytes_s is None:
        return 0.0
    return nbytes / faults.bandwidth_bytes_s


# ---------------------------------------------------------------------------------------------
# The shell


@dataclass
class ProxyStats:
    connections: int = 0
    cuts: int = 0  # connections closed by cut_after_bytes or disable()
    refused: int = 0  # connections refused while disabled
    bytes_upstream: int = 0
    bytes_downstream: int = 0


@dataclass(eq=False)  # hashed by identity: kept in a set of open connections
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    sent_upstream: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self, *, abrupt: bool) -> None:
        """Close both sides; `abrupt` drops what is still buffered here, as a broken link would."""
        for writer in (self.client, self.upstream):
            if abrupt:
                writer.transport.abort()
            elif not writer.transport.is_closing():
                writer.close()


class FaultProxy:
    def __init__(self, upstream_port: int, *, upstream_host: str = LOOPBACK, port: int | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port or free_port()
        self.faults = Faults()
        self.stats = ProxyStats()
        self._enabled = True
        self._connections: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url_base(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    # Control, from any thread.
    def start(self) -> None:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, LOOPBACK, self.port))
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"fault-proxy-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"fault proxy on {self.port} did not start")

    def stop(self) -> None:
        if self._loop is None:
            return
        self._call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults  # one reference swap: connections read it as bytes move

    def disable(self) -> None:
        """Cut every open connection and refuse new ones until `enable()`."""
        self._enabled = False
        self._call(self._cut_all)

    def enable(self) -> None:
        self._enabled = True

    def _call(self, function) -> None:
        assert self._loop is not None

        async def run() -> None:
            function()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # On the proxy's loop.
    def _cut_all(self) -> None:
        for connection in list(self._connections):
            connection.close(abrupt=True)
            self.stats.cuts += 1
        self._connections.clear()

    def _shutdown(self) -> None:
        self._cut_all()
        if self._server is not None:
            self._server.close()

    async def _accept(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        if not self._enabled:
            self.stats.refused += 1
            client.transport.abort()
            return
        try:
            upstream_reader, upstream = await asyncio.open_connection(*self.upstream)
        except OSError:
            client.transport.abort()
            return
        self.stats.connections += 1
        connection = _Connection(client, upstream)
        self._connections.add(connection)
        connection.tasks = [
            asyncio.create_task(self._pump(connection, client_reader, upstream, upstream_bound=True)),
            asyncio.create_task(self._pump(connection, upstream_reader, client, upstream_bound=False)),
        ]
        await asyncio.gather(*connection.tasks, return_exceptions=True)
        connection.close(abrupt=False)
        self._connections.discard(connection)

    async def _pump(
        self,
        connection: _Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        upstream_bound: bool,
    ) -> None:
        """Copy one direction, each chunk held for the latency and paced to the bandwidth. Chunks
        are timed on arrival, so latency delays the stream rather than dividing its throughput."""
        queue: asyncio.Queue[tuple[float, bytes, bool]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data, cut = await queue.get()
                if not data and not cut:  # end of stream from the reader
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                await asyncio.sleep(max(due - time.monotonic(), 0))
                if data:
                    writer.write(data)
                    await writer.drain()
                    await asyncio.sleep(transfer_time_s(self.faults, len(data)))
                if cut:
                    self.stats.cuts += 1
                    connection.close(abrupt=True)
                    return

        delivering = asyncio.create_task(deliver())
        try:
            while not delivering.done():
                data = await reader.read(CHUNK_BYTES)
                if not data:
                    queue.put_nowait((0.0, b"", False))
                    break
                cut = False
                if upstream_bound:
                    passed, cut = allowance(self.faults, connection.sent_upstream, len(data))
                    data = data[:passed]
                    connection.sent_upstream += passed
                    self.stats.bytes_upstream += passed
                else:
                    self.stats.bytes_downstream += len(data)
                queue.put_nowait((time.monotonic() + self.faults.latency_s, data, cut))
                if cut:
                    break
            await delivering
        except (ConnectionError, OSError):
            connection.close(abrupt=True)
        finally:
            delivering.cancel()
