"""`saga conformance`: drive a running participant through the protocol's obligations, one check a row.

The driver stands where the orchestrator stands: it publishes commands to
the participant's queue through `<ns>.commands`, with its own exclusive
reply queue as `reply_to`, and watches `<ns>.dead` for what the participant
dead-letters. Every scenario uses a saga id of its own, so a participant's
records of one cannot answer another. What it checks is what
docs/protocol.md calls a participant's obligations (section numbers in
each check's `rule`); what cannot be driven from outside (a handler that
crashes, a message redelivered five times) is left to the participant's
own tests. Run it against a test deployment: the action really happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import ChannelNotFoundEntity

from participants.edge.amqp import REASON, SAGA_ID, Broker, Envelope
from participants.edge.settings import Settings
from statemachines.messages import (
    COMPENSATED,
    DEADLINE_EXCEEDED,
    UNKNOWN_COMMAND,
    Command,
    MalformedMessage,
    Reply,
    decode,
    encode,
)

Status = Literal["pass", "FAIL", "warn", "skip"]
SAGA_TYPE = "conformance"
STEP = "conformance_step"
NO_SUCH_COMMAND = "conformance_no_such_command"


# Every check, in the order run, with the section of docs/protocol.md it holds the participant to.
RULES = {
    "an action gets a reply of the documented shape": "5.1",
    "the reply carries the documented AMQP properties": "4",
    "a repeated message_id gets the same reply": "5.2",
    "a new attempt of a succeeded step gets its success back": "5.3",
    "a compensation of a succeeded step succeeds": "5.4",
    "a repeated compensation gets the same reply": "5.2",
    "an action after its compensation is refused": "5.5",
    "a compensation before its action succeeds": "5.5",
    "the action arriving after it is refused": "5.5",
    "an action past its deadline is not started": "5.7",
    "the next attempt, in time, runs": "5.7",
    "a compensation past its deadline is still processed": "5.7",
    "an unknown command gets a failure reply": "5.8",
    "a body that is not JSON is dead-lettered with a reason": "5.9",
    "a command of the wrong shape is dead-lettered with a reason": "5.9",
}


class NotReady(Exception):
    """The participant cannot be checked: its queue is missing or nobody consumes it."""


@dataclass(frozen=True)
class Target:
    participant: str
    command: str
    compensation: str | None
    payload: dict[str, Any]
    timeout: float = 10.0


@dataclass(frozen=True)
class Result:
    check: str
    status: Status
    detail: str
    rule: str

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "detail": self.detail, "rule": self.rule}


@dataclass
class Answer:
    """A reply as it arrived: decoded (or why not), and the AMQP properties it came with."""

    reply: Reply | None
    problem: str
    properties: dict[str, Any]
    millis: float


class Failed(Exception):
    """A check's expectation was not met; the message is the row's detail."""


class Warned(Exception):
    """The participant did what it must but not what it should; the message says what."""


@dataclass
class _Driver:
    settings: Settings
    target: Target
    broker: Broker
    reply_queue: str = ""
    replies: dict[str, asyncio.Future[Answer]] = field(default_factory=dict)
    dead: dict[str, asyncio.Future[AbstractIncomingMessage]] = field(default_factory=dict)
    sent_at: dict[str, float] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)

    def on_reply(self, message: AbstractIncomingMessage) -> None:
        try:
            reply: Reply | None = decode(Reply, message.body)
            problem = ""
        except MalformedMessage as exc:
            reply, problem = None, str(exc)
        key = reply.in_reply_to if reply is not None else (message.correlation_id or "")
        properties = {
            "content_type": message.content_type,
            "delivery_mode": int(message.delivery_mode or 1),
            "correlation_id": message.correlation_id,
            "message_id": message.message_id,
            "type": message.type,
        }
        waiting = self.replies.get(key)
        if waiting is not None and not waiting.done():
            millis = (time.monotonic() - self.sent_at.get(key, time.monotonic())) * 1000
            waiting.set_result(Answer(reply, problem, properties, millis))

    def on_dead(self, message: AbstractIncomingMessage) -> None:
        waiting = self.dead.get(message.message_id or "")
        if waiting is not None and not waiting.done():
            waiting.set_result(message)

    def command(
        self, saga_id: str, action: str, attempt: int, deadline: float | None = None, name: str | None = None
    ) -> Command:
        """An attempt as the orchestrator would send it: of the target's action or compensation, or of `name`."""
        target = self.target
        name = name or (target.command if action == "do" else target.compensation)
        assert name is not None
        return Command(
            message_id=f"{saga_id}:{uuid.uuid4().hex[:8]}",
            saga_id=saga_id,
            saga_type=SAGA_TYPE,
            step=STEP,
            action="do" if action == "do" else "compensate",
            command=name,
            attempt=attempt,
            payload=dict(target.payload),
            reply_to=self.reply_queue,
            deadline=time.time() + 60 if deadline is None else deadline,
        )

    async def send(self, command: Command) -> Answer:
        """Publish `command` and wait for its reply."""
        future = self.replies[command.message_id] = asyncio.get_running_loop().create_future()
        self.sent_at[command.message_id] = time.monotonic()
        await self.publish(encode(command), command.message_id, command.saga_id)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.target.timeout)
        except TimeoutError:
            raise Failed(
                f"no reply on reply_to within {self.target.timeout:g}s (does it reply to the command's reply_to?)"
            ) from None
        finally:
            if future.done():
                self.replies.pop(command.message_id, None)

    async def publish(self, body: bytes, message_id: str, saga_id: str) -> None:
        names = self.settings.names
        await self.broker.publish(
            [
                Envelope(
                    names.commands_exchange,
                    self.target.participant,
                    body,
                    message_id,
                    saga_id,
                    "Command",
                    self.reply_queue,
                )
            ]
        )

    async def row(self, check: str, run: Callable[[], Awaitable[str]], needs: str | None = None) -> bool:
        """Run one check; its detail is what `run` returns, or why it failed."""
        rule = RULES[check]
        if needs is not None:
            self.results.append(Result(check, "skip", needs, rule))
            return False
        try:
            detail = await run()
        except Failed as exc:
            self.results.append(Result(check, "FAIL", str(exc), rule))
            return False
        except Warned as exc:
            self.results.append(Result(check, "warn", str(exc), rule))
            return True
        self.results.append(Result(check, "pass", detail, rule))
        return True


def _reply(answer: Answer, command: Command) -> Reply:
    """The answer's Reply, checked to answer `command`, or Failed saying what is wrong."""
    if answer.reply is None:
        raise Failed(f"the reply does not decode: {answer.problem}")
    reply = answer.reply
    wrong = [
        f"{name} is {got!r}, not {want!r}"
        for name, got, want in (
            ("in_reply_to", reply.in_reply_to, command.message_id),
            ("saga_id", reply.saga_id, command.saga_id),
            ("step", reply.step, command.step),
            ("action", reply.action, command.action),
        )
        if got != want
    ]
    if wrong:
        raise Failed("the reply does not echo the command: " + "; ".join(wrong))
    return reply


def _succeeded(answer: Answer, command: Command) -> Reply:
    reply = _reply(answer, command)
    if reply.outcome != "success":
        error = reply.error
        raise Failed(f"failure {error.code}: {error.message}" if error else "failure without an error")
    return reply


def _refused(answer: Answer, command: Command, code: str) -> Reply:
    reply = _reply(answer, command)
    if reply.outcome != "failure" or reply.error is None:
        raise Failed(f"replied {reply.outcome}; the protocol says failure {code}")
    if reply.error.code != code:
        raise Failed(f"failure {reply.error.code}: {reply.error.message}; the protocol says {code}")
    return reply


def _same(first: Reply, again: Reply) -> str:
    if (first.outcome, first.data, first.error) != (again.outcome, again.data, again.error):
        raise Failed(
            f"the repeat got {again.outcome} {again.error or again.data}, the first {first.outcome} "
            f"{first.error or first.data}"
        )
    if first.message_id != again.message_id:
        raise Warned(f"same reply, but a new message_id {again.message_id!r} (first {first.message_id!r})")
    return "the same reply, same message_id"


async def check(settings: Settings, target: Target) -> list[Result]:
    """Drive the participant through every check; the results in the order run."""
    names = settings.names
    queue_name = names.participant_queue(target.participant)
    broker = await Broker.open(settings.amqp_url, names)
    try:
        await _ready(broker, queue_name, target.participant, settings.namespace)
        await broker.declare_participant(target.participant)
        driver = _Driver(settings, target, broker)
        channel = await broker.connection.channel()
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)
        driver.reply_queue = replies.name
        await replies.consume(_sync(driver.on_reply), no_ack=True)
        dead = await channel.declare_queue(exclusive=True, auto_delete=True)
        await dead.bind(await channel.get_exchange(names.dead_exchange), "#")
        await dead.consume(_sync(driver.on_dead), no_ack=True)
        await _scenarios(driver, queue_name)
        with contextlib.suppress(Exception):
            await channel.close()
        return driver.results
    finally:
        await broker.close()


async def _ready(broker: Broker, queue: str, participant: str, namespace: str) -> None:
    channel = await broker.connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
    except ChannelNotFoundEntity:
        raise NotReady(
            f"there is no queue {queue!r}: is participant {participant!r} running in namespace {namespace!r}?"
        ) from None
    consumers = declared.declaration_result.consumer_count
    with contextlib.suppress(Exception):
        await channel.close()
    if not consumers:
        raise NotReady(f"nobody consumes {queue!r}: start participant {participant!r} first")


def _sync(handler: Callable[[AbstractIncomingMessage], None]) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
    async def consume(message: AbstractIncomingMessage) -> None:
        handler(message)

    return consume


def _saga() -> str:
    return f"conformance-{uuid.uuid4().hex[:12]}"


async def _scenarios(d: _Driver, queue: str) -> None:
    target = d.target
    no_compensation = None if target.compensation else "no --compensation given"

    # 1. One action, its duplicate, a new attempt, then its compensation and a late action.
    saga = _saga()
    first = d.command(saga, "do", 1)
    state: dict[str, Any] = {}

    async def shape() -> str:
        answer = await d.send(first)
        state["reply"] = _succeeded(answer, first)
        state["answer"] = answer
        return f"success in {answer.millis:.0f} ms"

    acted = await d.row("an action gets a reply of the documented shape", shape)
    needs_action = None if acted else "needs an action that succeeds (see the first row; try another --payload)"

    async def properties() -> str:
        props = state["answer"].properties
        missing = []
        if props["content_type"] != "application/json":
            missing.append(f"content_type is {props['content_type']!r}, not 'application/json'")
        if props["delivery_mode"] != 2:
            missing.append("not persistent (delivery_mode 2)")
        if props["correlation_id"] != saga:
            missing.append(f"correlation_id is {props['correlation_id']!r}, not the saga id")
        if not props["message_id"]:
            missing.append("no message_id property")
        if props["type"] != "Reply":
            missing.append(f"type is {props['type']!r}, not 'Reply'")
        if missing:
            raise Warned("; ".join(missing))
        return "persistent JSON; message_id, correlation_id and type set"

    await d.row("the reply carries the documented AMQP properties", properties, needs_action)

    async def duplicate() -> str:
        return _same(state["reply"], _reply(await d.send(first), first))

    await d.row("a repeated message_id gets the same reply", duplicate, needs_action)

    async def retry() -> str:
        again = d.command(saga, "do", 2)
        reply = _succeeded(await d.send(again), again)
        if reply.data != state["reply"].data:
            raise Failed(f"a second success with other data {reply.data} (the first: {state['reply'].data})")
        return "the first success again"

    await d.row("a new attempt of a succeeded step gets its success back", retry, needs_action)
    compensation = d.command(saga, "compensate", 1) if target.compensation else None

    async def compensate() -> str:
        assert compensation is not None
        state["compensation"] = _succeeded(await d.send(compensation), compensation)
        return "success"

    compensated = await d.row(
        "a compensation of a succeeded step succeeds", compensate, needs_action or no_compensation
    )

    async def compensate_again() -> str:
        assert compensation is not None
        return _same(state["compensation"], _reply(await d.send(compensation), compensation))

    await d.row(
        "a repeated compensation gets the same reply",
        compensate_again,
        None if compensated else "needs the compensation above",
    )

    await d.row(
        "an action after its compensation is refused",
        _late_action(d, saga, 3),
        None if compensated else "needs the compensation above",
    )

    # 2. A compensation that overtakes its action.
    saga = _saga()

    async def early() -> str:
        undo = d.command(saga, "compensate", 1)
        _succeeded(await d.send(undo), undo)
        return "success, with nothing to undo"

    early_done = await d.row("a compensation before its action succeeds", early, no_compensation)

    await d.row(
        "the action arriving after it is refused",
        _late_action(d, saga, 1),
        None if early_done else (no_compensation or "needs the compensation above"),
    )

    # 3. Deadlines.
    saga = _saga()

    async def past_deadline() -> str:
        action = d.command(saga, "do", 1, deadline=time.time() - 60)
        _refused(await d.send(action), action, DEADLINE_EXCEEDED)
        return f"failure {DEADLINE_EXCEEDED}"

    refused = await d.row("an action past its deadline is not started", past_deadline)

    async def after_deadline() -> str:
        action = d.command(saga, "do", 2)
        _succeeded(await d.send(action), action)
        return "success: the refusal left no trace"

    await d.row("the next attempt, in time, runs", after_deadline, None if refused else "needs the refusal above")

    async def late_compensation() -> str:
        undo = d.command(saga, "compensate", 1, deadline=time.time() - 60)
        _succeeded(await d.send(undo), undo)
        return "success"

    await d.row("a compensation past its deadline is still processed", late_compensation, no_compensation)

    # 4. What the participant does not know, and what it cannot read.
    async def unknown() -> str:
        action = d.command(_saga(), "do", 1, name=NO_SUCH_COMMAND)
        _refused(await d.send(action), action, UNKNOWN_COMMAND)
        return f"failure {UNKNOWN_COMMAND}"

    await d.row("an unknown command gets a failure reply", unknown)

    async def not_json() -> str:
        return await _dead_lettered(d, queue, b"{this is not JSON", _saga(), f"{_saga()}:poison")

    await d.row("a body that is not JSON is dead-lettered with a reason", not_json)

    async def wrong_shape() -> str:
        command = d.command(_saga(), "do", 1)
        body = encode(command).replace(b'"attempt":1', b'"attempt":"one"')
        return await _dead_lettered(d, queue, body, command.saga_id, command.message_id)

    await d.row("a command of the wrong shape is dead-lettered with a reason", wrong_shape)


def _late_action(d: _Driver, saga: str, attempt: int) -> Callable[[], Awaitable[str]]:
    """The check that an action of a compensated step is refused, not performed."""

    async def late() -> str:
        action = d.command(saga, "do", attempt)
        _refused(await d.send(action), action, COMPENSATED)
        return f"failure {COMPENSATED}"

    return late


async def _dead_lettered(d: _Driver, queue: str, body: bytes, saga: str, message_id: str) -> str:
    """Publish poison `body` and wait for its dead letter; a reply to it (by `message_id`) fails the check."""
    future = d.dead[message_id] = asyncio.get_running_loop().create_future()
    replied = d.replies[message_id] = asyncio.get_running_loop().create_future()
    await d.publish(body, message_id, saga)
    done, _ = await asyncio.wait({future, replied}, timeout=d.target.timeout, return_when=asyncio.FIRST_COMPLETED)
    if replied in done:
        raise Failed("it replied instead of dead-lettering")
    if future not in done:
        raise Failed(f"nothing reached {d.settings.names.dead_exchange} within {d.target.timeout:g}s")
    message = future.result()
    headers = message.headers or {}
    reason = headers.get(REASON)
    if isinstance(reason, bytes):
        reason = reason.decode(errors="replace")
    if not reason:
        death = "by the broker (nack without requeue)" if headers.get("x-death") else "without a reason"
        raise Failed(f"dead-lettered {death}: no {REASON} header")
    if message.body != body:
        raise Failed("dead-lettered, but the body was changed")
    if message.routing_key != queue:
        raise Warned(f"dead-lettered with routing key {message.routing_key!r}; the protocol says {queue!r}")
    saga_id = headers.get(SAGA_ID)
    if (saga_id.decode(errors="replace") if isinstance(saga_id, bytes) else saga_id) != saga:
        raise Warned(f"dead-lettered with a reason, but without the saga's id in {SAGA_ID}")
    return f"{REASON}: {reason[:60]}"


def table(results: list[Result]) -> str:
    """The results as a plain-text table with a summary line."""
    width = max(len(r.check) for r in results)
    counts = {status: sum(r.status == status for r in results) for status in ("pass", "FAIL", "warn", "skip")}
    lines = [f"{'check':<{width}}  result  §    detail"]
    lines += [f"{r.check:<{width}}  {r.status:<6}  {r.rule:<4} {r.detail}" for r in results]
    lines.append(
        f"{counts['pass']} checks passed, {counts['FAIL']} failed, {counts['warn']} warned, {counts['skip']} skipped"
    )
    return "\n".join(lines)
