"""Taking a start off `<ns>.start`: check it, apply it through the engine, and answer it if it is refused.

A start is refused (see `orchestrator.refusals`) when it does not decode or
is out of bounds, names a queue its outcome may not go to (only queues
named `<ns>.reply.<name>` and exclusive queues of live connections may
receive outcomes), names a saga type this orchestrator does not run, has
data that does not fit, or reuses an id with other data. The same start
again is the same saga; if that saga has ended, the sender gets its outcome.
"""

from __future__ import annotations

import uuid

from aio_pika.abc import AbstractIncomingMessage

from orchestrator.admission import Admission
from orchestrator.engine import Engine
from orchestrator.refusals import About, Refusals, about, bounds_problem
from orchestrator.registry import Registry, UnknownSaga
from participants.edge.amqp import Envelope
from statemachines.decide import Start
from statemachines.instance import outcome_of
from statemachines.messages import TERMINAL, MalformedMessage, StartSaga, decode, encode
from statemachines.names import id_problem, reply_to_problem


class Starts:
    def __init__(
        self, engine: Engine, registry: Registry, refusals: Refusals, admission: Admission | None = None
    ) -> None:
        self.engine = engine
        self.admission = admission
        self.registry = registry
        self.refusals = refusals
        self.names = engine.names

    async def take(self, message: AbstractIncomingMessage) -> None:
        """Start the saga, or raise the `Rejected` that dead-letters the start once its sender is told why."""
        # Without an id of its own, a redelivered start must still be the same saga.
        fallback = message.message_id if id_problem(message.message_id) is None else None
        try:
            start = decode(StartSaga, message.body)
        except MalformedMessage as exc:
            sender = about(message.body, fallback)
            reply_to = sender.reply_to
            if reply_to is not None and (reply_to_problem(reply_to) or not await self.may_answer(reply_to)):
                sender.reply_to = None
            why = bounds_problem(message.body) or str(exc)
            raise await self.refusals.start(sender, "invalid_start", why) from None
        # With neither, a redelivery would be a saga of its own: the sender should have given an id.
        saga_id = start.saga_id or fallback or str(uuid.uuid4())
        sender = About(start.saga_type, saga_id)
        if start.reply_to is not None:
            if not await self.may_answer(start.reply_to):
                why = (
                    f"reply_to {start.reply_to!r} is neither an exclusive queue of a live connection "
                    f"nor a queue named {self.names.reply_prefix}<name>"
                )
                raise await self.refusals.start(sender, "reply_to_not_allowed", why)
            sender.reply_to = start.reply_to
        try:
            saga = self.registry.latest(start.saga_type)
        except UnknownSaga as exc:
            raise await self.refusals.start(sender, "unknown_saga_type", str(exc)) from None
        event = Start(saga_id=saga_id, data=start.data, reply_to=start.reply_to, saga_type=start.saga_type)
        if self.admission is not None:
            # Unacked while it waits: a crash puts it back in the queue. A start of a saga that
            # exists waits too (it is cheap to answer, but telling costs a read on every start).
            await self.admission.admit()
        decision = await self.engine.apply(saga_id, event, saga)
        if decision.refusal is not None:
            raise await self.refusals.start(sender, decision.refusal.code, decision.refusal.message)
        inst = decision.instance
        if not decision.changed and inst is not None and inst.status in TERMINAL and start.reply_to:
            # The same start again, after its saga ended: its sender gets the outcome too.
            envelope = Envelope(
                "", start.reply_to, encode(outcome_of(inst)), f"{saga_id}:{inst.rev}", saga_id, "SagaEvent"
            )
            await self.engine.broker.publish([envelope])

    async def may_answer(self, reply_to: str) -> bool:
        """Outcomes go to a queue named `<ns>.reply.<name>`, or to an exclusive queue of a live connection."""
        return await self.refusals.may_answer(reply_to)
