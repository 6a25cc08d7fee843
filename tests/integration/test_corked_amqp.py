"""On a real connection to RabbitMQ, the publishes of one loop turn leave in a handful of sends.

tests/unit/test_corking.py holds `cork` to its contract on a stand-in
transport; this holds the broker's own connection and publish path to
actually using it. Both once broke without a word: aio-pika 10 drops
keyword arguments it does not know (the transport factory among them), and
a publish that waits for its own write holds the channel until it is sent.
Either way every publish cost a system call of its own.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from aiormq.connection import Connection

from participants.edge.amqp import Broker, Envelope
from participants.edge.settings import Settings

# As many as aiormq's write queue holds: past it, publishers wait their turn one by one.
PUBLISHES = Connection.FRAME_BUFFER_SIZE


async def test_a_burst_of_confirmed_publishes_leave_in_a_handful_of_sends(
    settings: Settings, cleanup: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = await Broker.open(settings.amqp_url, settings.names)
    try:
        queue = await broker.channel.declare_queue(exclusive=True)
        envelopes = [Envelope("", queue.name, b"{}", f"m{i}", "c", "test") for i in range(PUBLISHES)]
        sends = 0
        send = socket.socket.send

        def counted(self: socket.socket, data: Any, *args: Any) -> int:
            nonlocal sends
            sends += 1
            return send(self, data, *args)

        monkeypatch.setattr(socket.socket, "send", counted)
        await broker.publish(envelopes)  # returns once the broker confirmed each one
        monkeypatch.undo()
        # Uncorked, or waiting for each write, every publish is a send of its own.
        assert 0 < sends <= 2, f"{PUBLISHES} publishes took {sends} sends"
        assert (await queue.declare()).message_count == PUBLISHES
    finally:
        await broker.close()
