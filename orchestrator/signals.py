"""Taking a signal off `<ns>.signals`: check it, apply it to its saga, answer it.

A `SignalSaga` is an outside event for a saga that waits for it (an
`Await` step): any service may send one, the CLI (`saga signal`), the
client (`SagaClient.signal`) and the web API send them too. Accepted, it is
answered with a `SignalResult` to its `reply_to` (where given and allowed)
and acked; the same signal_id again is accepted as a duplicate and applies
nothing. Refused (it does not decode, its reply_to is not allowed, the saga
is unknown, has ended, or does not wait for it), it is answered at once,
written into the saga's history when the saga exists, and dead-lettered
with its reason, so that an operator can replay it
(`saga dead-letters replay`) once the saga waits for it. A reply_to whose
queue is gone (its sender left: a replayed signal) is not answered, and the
signal is applied all the same.
"""

from __future__ import annotations

from aio_pika.abc import AbstractIncomingMessage

from orchestrator.engine import Engine
from orchestrator.refusals import About, Refusals, about
from orchestrator.registry import UnknownSaga
from participants.edge.amqp import Envelope
from statemachines.decide import Signal
from statemachines.messages import MalformedMessage, SignalResult, SignalSaga, decode, encode
from statemachines.names import reply_to_problem


class Signals:
    def __init__(self, engine: Engine, refusals: Refusals) -> None:
        self.engine = engine
        self.refusals = refusals

    async def take(self, message: AbstractIncomingMessage) -> None:
        """Apply the signal, or raise the `Rejected` that dead-letters it once its sender is told why."""
        try:
            signal = decode(SignalSaga, message.body)
        except MalformedMessage as exc:
            sender = about(message.body)
            if sender.reply_to is not None and (
                reply_to_problem(sender.reply_to) or not await self.refusals.may_answer(sender.reply_to)
            ):
                sender.reply_to = None
            raise await self.refusals.signal(sender, "invalid_signal", str(exc)) from None
        sender = About(saga_id=signal.saga_id, name=signal.name, signal_id=signal.signal_id)
        if signal.reply_to is not None:
            names = self.engine.names
            state = "named" if names.named_reply_queue(signal.reply_to) else None
            state = state or await self.engine.broker.queue_state(signal.reply_to)
            if state == "missing":
                # Its sender has gone (a replayed signal): apply it all the same, answer nobody.
                signal.reply_to = None
            elif state == "shared":
                why = (
                    f"reply_to {signal.reply_to!r} is neither an exclusive queue of a live connection "
                    f"nor a queue named {names.reply_prefix}<name>"
                )
                raise await self.refusals.signal(sender, "reply_to_not_allowed", why)
            sender.reply_to = signal.reply_to
        event = Signal(name=signal.name, signal_id=signal.signal_id, data=signal.data)
        try:
            decision = await self.engine.apply(signal.saga_id, event)
        except UnknownSaga as exc:
            raise await self.refusals.signal(sender, "unknown_saga", str(exc)) from None
        if decision.instance is None:
            why = f"no saga {signal.saga_id!r} (never started, or expired)"
            raise await self.refusals.signal(sender, "unknown_saga", why)
        if decision.signal_refusal is not None:
            raise await self.refusals.signal(
                sender, decision.signal_refusal, decision.note, recorded=bool(decision.history)
            )
        await self.accepted(signal, duplicate=not decision.changed)

    async def accepted(self, signal: SignalSaga, duplicate: bool) -> None:
        """Tell the sender its signal was taken (or had been, under its signal_id)."""
        if signal.reply_to is None:
            return
        result = SignalResult(
            saga_id=signal.saga_id,
            name=signal.name,
            signal_id=signal.signal_id,
            outcome="accepted",
            duplicate=duplicate,
            at=self.refusals.clock(),
        )
        message_id = f"{signal.saga_id}:signal:{signal.signal_id}"
        envelope = Envelope("", signal.reply_to, encode(result), message_id, signal.saga_id, "SignalResult")
        await self.engine.broker.publish([envelope])
