"""AMQP frames written in one turn of the event loop leave in one send.

aiormq writes every frame as it comes, and a socket send costs more than
the frame: a publish, its neighbours' publishes and a batch of acks made in
the same turn now cost one system call, and the broker reads one segment.
aiormq takes a transport factory for exactly this kind of change.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory
from yarl import URL


class Corked(TransportFactory):
    async def create(self, url: URL, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        plain = TLSTransportFactory() if url.scheme == "amqps" else TCPTransportFactory()
        reader, writer = await plain.create(url, **kwargs)
        cork(writer)
        return reader, writer


def cork(writer: asyncio.StreamWriter) -> None:
    """Hold `writer`'s writes until the end of the loop turn; drain and close send them first."""
    loop = asyncio.get_running_loop()
    held: list[bytes] = []
    send, drain, close, write_eof = writer.write, writer.drain, writer.close, writer.write_eof

    def flush() -> None:
        if held:
            data = b"".join(held)
            held.clear()
            if not writer.is_closing():
                send(data)

    def write(data: bytes | bytearray | memoryview) -> None:
        if not held:
            loop.call_soon(flush)
        held.append(bytes(data))

    async def drained() -> None:
        flush()
        await drain()

    def closed() -> None:
        flush()
        close()

    def eof() -> None:
        flush()
        write_eof()

    # Instance attributes, not a subclass: a second StreamWriter on the same
    # transport would close it when the first one is collected.
    writer.write = write  # type: ignore[method-assign]
    writer.drain = drained  # type: ignore[method-assign]
    writer.close = closed  # type: ignore[method-assign]
    writer.write_eof = eof  # type: ignore[method-assign]
