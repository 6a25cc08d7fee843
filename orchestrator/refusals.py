"""Refusals travel back: a refused start is answered at once, a refused reply is written where people look.

A start the orchestrator will not run (it does not decode, names an unknown
saga type or a queue its outcome may not go to, its data does not fit, or
its id is taken by another start) is dead-lettered like any poison, and
also answered: a `SagaEvent` with status `rejected` and the reason goes to
its `reply_to` (where allowed) and onto `<ns>.events` as
`<type>.<id>.rejected`, and a record under its id stays for the retention
period, for `saga show`. A reply that is refused but still names a saga
goes into that saga's history, and its timeout will say so. A refused
signal is answered at once with a `SignalResult` to its `reply_to` (where
allowed), and goes into the history of the saga it names, if that exists.

Of a message that does not decode only a few fields are read, leniently and
each within its bounds; nothing else of it is trusted.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from orchestrator.engine import Engine
from participants.edge.amqp import Envelope, Rejected
from statemachines.decide import RefusedReply
from statemachines.instance import HistoryEntry
from statemachines.messages import REJECTED, ErrorInfo, SagaEvent, SignalResult, encode
from statemachines.names import MAX_ID, MAX_NAME, MAX_QUEUE, id_problem, name_problem, reply_to_problem


class About(msgspec.Struct):
    """What can be told of a start or a reply, valid or not: each field None unless it is within its bounds."""

    saga_type: str | None = None
    saga_id: str | None = None
    reply_to: str | None = None
    participant: str | None = None
    in_reply_to: str | None = None
    # A signal's: its name and idempotency key.
    name: str | None = None
    signal_id: str | None = None


class _Loose(msgspec.Struct):
    # Raw: a value of any shape is kept as its JSON text, never built; empty when absent.
    saga_type: msgspec.Raw = msgspec.Raw()
    saga_id: msgspec.Raw = msgspec.Raw()
    reply_to: msgspec.Raw = msgspec.Raw()
    participant: msgspec.Raw = msgspec.Raw()
    in_reply_to: msgspec.Raw = msgspec.Raw()
    name: msgspec.Raw = msgspec.Raw()
    signal_id: msgspec.Raw = msgspec.Raw()


_loose = msgspec.json.Decoder(_Loose)
_string = msgspec.json.Decoder(str)


def _absent(raw: msgspec.Raw) -> bool:
    return len(raw) == 0 or bytes(raw) == b"null"


def _text(raw: msgspec.Raw, limit: int | None = None) -> str | None:
    """The JSON string in `raw` (if it is one, of at most `limit` characters)."""
    if (limit is not None and len(raw) > limit + 2) or not bytes(raw).startswith(b'"'):
        return None
    try:
        return _string.decode(raw)
    except msgspec.DecodeError:
        return None


def about(body: bytes, fallback_id: str | None = None) -> About:
    """The saga type, id, reply_to and sender a message names, read leniently; what is out of bounds stays None."""
    try:
        loose = _loose.decode(body)
    except (msgspec.DecodeError, RecursionError):
        loose = _Loose()
    saga_type = _text(loose.saga_type, MAX_NAME)
    # Only a start without an id of its own goes by its message's id.
    saga_id = fallback_id if _absent(loose.saga_id) else _text(loose.saga_id, MAX_ID)
    participant = _text(loose.participant, MAX_NAME)
    name = _text(loose.name, MAX_NAME)
    signal_id = _text(loose.signal_id, MAX_ID)
    return About(
        saga_type=saga_type if name_problem(saga_type) is None else None,
        saga_id=saga_id if id_problem(saga_id) is None else None,
        reply_to=_text(loose.reply_to, MAX_QUEUE),
        participant=participant if name_problem(participant) is None else None,
        in_reply_to=_text(loose.in_reply_to, MAX_QUEUE),
        name=name if name_problem(name) is None else None,
        signal_id=signal_id if id_problem(signal_id) is None else None,
    )


def bounds_problem(body: bytes) -> str | None:
    """Why a start's type, id or reply_to is out of bounds, in words, where one is."""
    try:
        loose = _loose.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    checks: tuple[tuple[str, msgspec.Raw, Callable[[str], str | None]], ...] = (
        ("saga_type", loose.saga_type, lambda value: name_problem(value, "the saga type")),
        ("saga_id", loose.saga_id, id_problem),
        ("reply_to", loose.reply_to, reply_to_problem),
    )
    for field, raw, check in checks:
        if _absent(raw):
            continue
        value = _text(raw)
        problem = f"{field} must be a string" if value is None else check(value)
        if problem is not None:
            return problem
    return None


class Refusals:
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock

    async def start(self, start: About, code: str, reason: str) -> Rejected:
        """Tell the sender of a refused start, keep the record, count it; returns the Rejected that dead-letters it.

        `start.reply_to` must be one the outcome may go to (None if not).
        """
        engine = self.engine
        names = engine.names
        saga_id = start.saga_id or ""
        event = SagaEvent(
            saga_id=saga_id,
            saga_type=start.saga_type or "",
            status=REJECTED,
            state="new",
            at=self.clock(),
            error=ErrorInfo(code, reason),
        )
        # A conflict's saga exists and runs on: its history has the refusal.
        if start.saga_id and code != "conflict":
            await engine.store.reject(event)
        body = encode(event)
        message_id = f"{saga_id or '_'}:{REJECTED}:{int(event.at * 1000)}"
        key = names.event_key(start.saga_type or "_", saga_id or "_", REJECTED)
        envelopes = [Envelope(names.events_exchange, key, body, message_id, saga_id, "SagaEvent")]
        if start.reply_to:
            envelopes.append(Envelope("", start.reply_to, body, message_id, saga_id, "SagaEvent"))
        await engine.broker.publish(envelopes)
        await engine.store.count("rejected_starts")
        return Rejected(reason, start.saga_id)

    async def reply(self, reply: About, reason: str) -> Rejected:
        """Write a refused reply into the history of the saga it names; returns the Rejected that dead-letters it."""
        if reply.saga_id is not None:
            sender = reply.participant or "a participant"
            why = reason.removeprefix("not a valid Reply: ")
            refused = RefusedReply(f"reply from {sender} refused: {why}", reply.in_reply_to)
            decision = await self.engine.apply(reply.saga_id, refused)
            if decision.instance is not None:
                await self.engine.store.count("refused_replies")
        return Rejected(reason, reply.saga_id)

    async def may_answer(self, reply_to: str) -> bool:
        """Answers go to a queue named `<ns>.reply.<name>`, or to an exclusive queue of a live connection."""
        names = self.engine.names
        return names.named_reply_queue(reply_to) or await self.engine.broker.exclusive_elsewhere(reply_to)

    async def signal(self, signal: About, code: str, reason: str, recorded: bool = False) -> Rejected:
        """Answer a refused signal, write it into its saga's history; returns the Rejected that dead-letters it.

        `signal.reply_to` must be one the answer may go to (None if not);
        `recorded`: the saga's history has the refusal already (decide wrote it).
        """
        engine = self.engine
        now = self.clock()
        result = SignalResult(
            saga_id=signal.saga_id or "",
            name=signal.name or "",
            signal_id=signal.signal_id or "",
            outcome="refused",
            error=ErrorInfo(code, reason),
            at=now,
        )
        if signal.reply_to:
            message_id = f"{signal.saga_id or '_'}:signal:{signal.signal_id or '_'}:{int(now * 1000)}"
            envelope = Envelope("", signal.reply_to, encode(result), message_id, signal.saga_id or "", "SignalResult")
            await engine.broker.publish([envelope])
        if signal.saga_id is not None and not recorded:
            inst = await engine.store.load(signal.saga_id)
            if inst is not None:
                named = f"signal {signal.name!r}" if signal.name else "a signal"
                entry = HistoryEntry(
                    at=now,
                    event="refused_signal",
                    source=inst.state,
                    dest=inst.state,
                    step=inst.step,
                    detail=f"{named} ({signal.signal_id or 'no signal id'}) refused: {code}: {reason}",
                )
                await engine.store.record(signal.saga_id, [entry])
        await engine.store.count("refused_signals")
        return Rejected(f"{code}: {reason}", signal.saga_id)
