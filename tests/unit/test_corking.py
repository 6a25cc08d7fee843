"""Frames written in one loop turn leave in one send, in order; drain and close send what is held."""

from __future__ import annotations

import asyncio

from participants.edge.corking import cork


class Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


async def _writer() -> tuple[asyncio.StreamWriter, Transport]:
    loop = asyncio.get_running_loop()
    transport = Transport()
    protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader())
    protocol.connection_made(transport)  # type: ignore[arg-type]
    writer = asyncio.StreamWriter(transport, protocol, None, loop)  # type: ignore[arg-type]
    cork(writer)
    return writer, transport


async def test_one_turn_of_writes_is_one_send_in_order() -> None:
    writer, transport = await _writer()
    for frame in (b"a", b"bb", b"ccc"):
        writer.write(frame)
    assert transport.sent == []
    await asyncio.sleep(0)
    assert transport.sent == [b"abbccc"]
    writer.write(b"d")
    await asyncio.sleep(0)
    assert transport.sent == [b"abbccc", b"d"]


async def test_drain_and_close_send_what_is_held() -> None:
    writer, transport = await _writer()
    writer.write(b"x")
    await writer.drain()
    assert transport.sent == [b"x"]
    writer.write(b"y")
    writer.close()
    assert transport.sent == [b"x", b"y"] and transport.closed
    await asyncio.sleep(0)
    assert transport.sent == [b"x", b"y"]  # nothing written twice, nothing after close
