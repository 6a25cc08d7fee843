"""Acks in batches: one `multiple` ack per channel for what finished together.

A quorum queue writes every settlement to its log, so one ack for thirty
messages costs the broker a third of thirty acks. Deliveries finish out of
order, though: a multiple ack may only reach up to the lowest delivery tag
still being processed. A finished message stuck behind a slow one is acked
on its own after `patience`, so one slow message never holds the prefetch
window shut.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass, field

from aio_pika.abc import AbstractIncomingMessage
from aiormq.abc import AbstractChannel
from aiormq.exceptions import ChannelInvalidStateError


@dataclass
class _Channel:
    active: set[int] = field(default_factory=set)
    # finished delivery tag -> when it finished
    done: dict[int, float] = field(default_factory=dict)


class Acks:
    def __init__(self, patience: float = 0.05) -> None:
        self.patience = patience
        self._channels: dict[AbstractChannel, _Channel] = {}
        self._scheduled = False
        self._writes: set[asyncio.Task[None]] = set()

    def started(self, message: AbstractIncomingMessage) -> None:
        state = self._state(message)
        if state is not None:
            state.active.add(_tag(message))

    def finished(self, message: AbstractIncomingMessage) -> None:
        """`message` may be acked: it goes out with the next batch."""
        state = self._state(message)
        if state is None:
            return
        tag = _tag(message)
        state.active.discard(tag)
        state.done[tag] = asyncio.get_running_loop().time()
        self._schedule(0.0)

    def abandoned(self, message: AbstractIncomingMessage) -> None:
        """`message` was nacked or rejected: no batch may cover it any more."""
        state = self._state(message)
        if state is not None:
            state.active.discard(_tag(message))

    async def flush(self) -> None:
        """Ack everything finished, now, and wait for the acks to be written."""
        self._send(everything=True)
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    def _state(self, message: AbstractIncomingMessage) -> _Channel | None:
        """The channel's bookkeeping; None once it closed (its deliveries come again)."""
        try:
            channel = message.channel
        except ChannelInvalidStateError:
            return None
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel()
        return state

    def _schedule(self, delay: float) -> None:
        if self._scheduled:
            return
        self._scheduled = True
        loop = asyncio.get_running_loop()
        if delay:
            loop.call_later(delay, self._send)
        else:
            loop.call_soon(self._send)

    def _send(self, everything: bool = False) -> None:
        self._scheduled = False
        now = asyncio.get_running_loop().time()
        waiting = False
        for channel, state in list(self._channels.items()):
            if channel.is_closed:
                # Its unacked deliveries went back to the queue with it.
                del self._channels[channel]
                continue
            floor = min(state.active, default=math.inf)
            below = [tag for tag in state.done if tag < floor]
            if below:
                top = max(below)
                self._write(channel, top, multiple=True)
                for tag in below:
                    del state.done[tag]
            for tag, at in list(state.done.items()):
                if everything or now - at >= self.patience:
                    self._write(channel, tag, multiple=False)
                    del state.done[tag]
            waiting = waiting or bool(state.done)
            if not state.active and not state.done:
                del self._channels[channel]
        if waiting:
            self._schedule(self.patience)

    def _write(self, channel: AbstractChannel, tag: int, multiple: bool) -> None:
        task = asyncio.get_running_loop().create_task(_ack(channel, tag, multiple))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)


async def _ack(channel: AbstractChannel, tag: int, multiple: bool) -> None:
    # A channel lost meanwhile redelivers these; handlers are idempotent.
    with contextlib.suppress(Exception):
        await channel.basic_ack(tag, multiple=multiple)


def _tag(message: AbstractIncomingMessage) -> int:
    assert message.delivery_tag is not None
    return message.delivery_tag
