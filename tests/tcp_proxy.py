"""A TCP proxy a test can stop and start, to take a service away from a worker and back."""

from __future__ import annotations

import asyncio
import contextlib

from conveyor import embedded


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``target_host:target_port`` while started.

    ``stop()`` closes the listener and every forwarded connection, as if the service
    went down; ``start()`` listens on the same port again. ``port`` picks the listening
    port (a free one by default), for a service that must advertise it before it starts.
    ``delay`` holds every chunk of the service's answers that many seconds: a slow service.
    """

    def __init__(
        self, target_host: str, target_port: int, *, port: int | None = None, delay: float = 0.0
    ) -> None:
        self.port = port or embedded.free_port()
        self.delay = delay
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer),
            self._pipe(up_reader, writer, self.delay),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float = 0.0
    ) -> None:
        try:
            while data := await reader.read(65536):
                if delay:
                    await asyncio.sleep(delay)  # the slowness this proxy stands for
                writer.write(data)
                await writer.drain()
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()
