"""A TCP proxy in front of RabbitMQ that cuts the first AMQP connection after its N-th frame.

It counts the frames the server sends on the first connection through it
(`frames`) and, with `cut_after=N`, forwards exactly N of them, then closes
both sides; later connections go through untouched, as after a broker restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct


class CuttingProxy:
    def __init__(self, upstream: tuple[str, int], cut_after: int | None = None) -> None:
        self.upstream = upstream
        self.cut_after = cut_after
        self.frames = 0  # sent by the server on the first connection
        self.cut = False
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        first = self.connections == 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer)),
            asyncio.ensure_future(self._frames(up_reader, writer) if first else self._pump(up_reader, writer)),
        ]
        for pump in pumps:
            self._tasks.add(pump)  # type: ignore[arg-type]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
                self._tasks.discard(pump)  # type: ignore[arg-type]
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()

    async def _frames(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Server to client, frame by frame (type, channel, size, payload, end), counting them."""
        while True:
            if self.cut_after is not None and self.frames >= self.cut_after:
                self.cut = True
                return
            try:
                header = await reader.readexactly(7)
            except asyncio.IncompleteReadError:
                return
            (size,) = struct.unpack(">I", header[3:7])
            rest = await reader.readexactly(size + 1)
            writer.write(header + rest)
            await writer.drain()
            self.frames += 1
