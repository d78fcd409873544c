"""A real TCP proxy for network faults: forwards to a server, and on ``stall()`` stops
forwarding the connections it holds without closing them (a NAT or firewall that
dropped their state: the peer's kernel still acknowledges, nothing gets through),
while connections made afterwards are forwarded as usual. Loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator


class StallingProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.setblocking(False)
        self.port = int(self._sock.getsockname()[1])
        # Per connection: its writers, and an event that is cleared while it is stalled.
        self._connections: list[tuple[list[asyncio.StreamWriter], asyncio.Event]] = []
        self._thread = threading.Thread(target=self._serve, name="test-proxy", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._accept, sock=self._sock))
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for writers, _ in self._connections:
                for writer in writers:
                    writer.transport.abort()
            self._loop.close()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.transport.abort()
            return
        flowing = asyncio.Event()
        flowing.set()
        self._connections.append(([client_writer, server_writer], flowing))
        await asyncio.gather(
            self._pump(client_reader, server_writer, flowing),
            self._pump(server_reader, client_writer, flowing),
        )

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event
    ) -> None:
        with contextlib.suppress(OSError):
            while True:
                await flowing.wait()
                data = await reader.read(65536)
                await flowing.wait()  # what arrived meanwhile is held, never sent
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    def stall(self) -> int:
        """Stops forwarding every connection held now; returns how many."""

        async def stall_all() -> int:
            for _, flowing in self._connections:
                flowing.clear()
            return len(self._connections)

        return asyncio.run_coroutine_threadsafe(stall_all(), self._loop).result(5)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@contextlib.contextmanager
def stalling_proxy(host: str, port: int) -> Iterator[StallingProxy]:
    proxy = StallingProxy(host, port)
    try:
        yield proxy
    finally:
        proxy.close()
