"""Every queue, exchange and Redis key name, under one namespace prefix.

Two deployments (or two test runs) with different namespaces share a broker
and a Redis without seeing each other. The names are part of the protocol,
so they live in the pure core where the orchestrator, the participants and
programs in other languages can all read them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from zlib import crc32

DEFAULT_NAMESPACE = "saga"

# Every value that becomes part of a routing key, a queue name or a Redis key
# is bounded where it enters (AMQP caps a routing key at 255 bytes, and one
# saga's key must never be another's pattern). A saga id has no "." "*" "#"
# (topic words and wildcards) and no "{" "}" (the Redis hash tag); all of
# them are ASCII, so characters are bytes.
MAX_ID = 128
# `(?![\s\S])` is the end of the string in Python and JSON Schema (ECMA) alike;
# `$` would let a trailing newline through in Python.
ID_PATTERN = r"^[A-Za-z0-9_:@+=~/-]+(?![\s\S])"
ID_CHARS = "letters, digits and _ - : @ + = ~ /"
# Saga types, steps, participants and namespaces.
MAX_NAME = 64
NAME_PATTERN = r"^[A-Za-z0-9_-]+(?![\s\S])"
NAME_CHARS = "letters, digits, _ and -"
# A queue that a saga's outcome may be sent to (checked further by `Names.reply_to_problem`).
MAX_QUEUE = 255
QUEUE_PATTERN = r"^[A-Za-z0-9._:-]+(?![\s\S])"
# A circuit breaker's key: `step:<saga>.<step>` or `participant:<participant>`,
# made of names that were bounded when the saga was declared.
MAX_BREAKER = len("participant:") + 2 * MAX_NAME + 1
BREAKER_PATTERN = r"^(step:[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+|participant:[A-Za-z0-9_-]+)(?![\s\S])"
_BREAKER = re.compile(BREAKER_PATTERN)
_ID = re.compile(ID_PATTERN)
_NAME = re.compile(NAME_PATTERN)
_QUEUE = re.compile(QUEUE_PATTERN)


def _problem(what: str, value: object, pattern: re.Pattern[str], limit: int, chars: str) -> str | None:
    if not isinstance(value, str):
        return f"{what} must be a string, got {type(value).__name__}"
    if not value:
        return f"{what} must not be empty"
    if len(value) > limit:
        return f"{what} is {len(value)} characters long; at most {limit} are allowed"
    if not pattern.fullmatch(value):
        return f"{what} may hold only {chars}, got {value!r}"
    return None


def id_problem(value: object, what: str = "a saga id") -> str | None:
    """Why `value` cannot be a saga id, or None if it can."""
    return _problem(what, value, _ID, MAX_ID, ID_CHARS)


def name_problem(value: object, what: str = "a saga type") -> str | None:
    """Why `value` cannot be a saga type, step, participant or namespace name, or None if it can."""
    return _problem(what, value, _NAME, MAX_NAME, NAME_CHARS)


def reply_to_problem(value: object) -> str | None:
    """Why `value` cannot be a start's reply_to, or None if it may be one.

    Within these bounds, outcomes still go only to a queue named with
    `Names.reply_prefix`, or to an exclusive queue of a live connection (the
    starter's own, which only the broker can tell: the orchestrator asks
    it); never into a participant's queue or anybody else's.
    """
    return _problem("reply_to", value, _QUEUE, MAX_QUEUE, "letters, digits and . _ : -")


def breaker_problem(value: object) -> str | None:
    """Why `value` cannot be a circuit breaker's key, or None if it can."""
    return _problem("a breaker key", value, _BREAKER, MAX_BREAKER, "step:<saga>.<step> or participant:<participant>")


# A message redelivered this often is poison: it is dead-lettered, never looped.
DELIVERY_LIMIT = 5
# A message delivered this often without ever being settled (its consumer dies on
# it, so never fails it) is dead-lettered on arrival; quorum queues' own backstop.
UNSETTLED_LIMIT = DELIVERY_LIMIT * 2
# quorum: replicated by Raft on every node, survives a node's loss; classic: on one
# node's disk, cheaper there. Every process of a namespace must use the same.
QUEUE_TYPES = ("quorum", "classic")
# Every saga lives in one of BUCKETS buckets (crc32 of its id). All the keys one
# commit writes carry the bucket's Redis Cluster hash tag, so they share a slot
# and the commit stays one atomic script on Redis Cluster too; the deadline and
# outbox sweeps walk the buckets, shared out among orchestrators by leases.
# Fixed for a namespace's life: a saga's keys are named by it (see `Names.layout_key`).
BUCKETS = 128


@dataclass(frozen=True)
class Names:
    namespace: str = DEFAULT_NAMESPACE
    queue_type: str = "quorum"  # one of QUEUE_TYPES

    # RabbitMQ
    @property
    def start_queue(self) -> str:
        return f"{self.namespace}.start"

    @property
    def reply_queue(self) -> str:
        return f"{self.namespace}.replies"

    @property
    def replies_exchange(self) -> str:
        """Where participants publish their replies, routing key the command's `reply_to` (the replies queue).

        The default exchange reaches every queue, and RabbitMQ grants writing
        to it as a whole (`amq.default`); a participant allowed to write only
        here can reach no queue but the replies'.
        """
        return f"{self.namespace}.reply-exchange"

    @property
    def commands_exchange(self) -> str:
        return f"{self.namespace}.commands"

    @property
    def events_exchange(self) -> str:
        return f"{self.namespace}.events"

    @property
    def signals_queue(self) -> str:
        """Signals for waiting sagas (`SignalSaga`), from any service."""
        return f"{self.namespace}.signals"

    @property
    def dead_exchange(self) -> str:
        return f"{self.namespace}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.namespace}.dead-letters"

    def participant_queue(self, participant: str) -> str:
        return f"{self.namespace}.participant.{participant}"

    # RabbitMQ users (`saga access`): a participant's replies carry its user as
    # the AMQP user-id, which the broker checks against the connection's login.
    def participant_user(self, participant: str) -> str:
        return f"{self.namespace}.participant.{participant}"

    @property
    def orchestrator_user(self) -> str:
        return f"{self.namespace}.orchestrator"

    @property
    def reply_prefix(self) -> str:
        """Named queues that may receive sagas' outcomes start with this (`StartSaga.reply_to`)."""
        return f"{self.namespace}.reply."

    def named_reply_queue(self, reply_to: str) -> bool:
        return reply_to.startswith(self.reply_prefix) and len(reply_to) > len(self.reply_prefix)

    def dead_queue_arguments(self) -> dict[str, Any]:
        """The dead-letter queue is of the work queues' type: quorum, a node's death loses no dead letter."""
        if self.queue_type == "classic":
            # Classic queue storage version 2 (RabbitMQ 3.10 and later, the only one from 4.0):
            # less memory and faster than version 1, which 3.x still makes by default.
            return {"x-queue-type": "classic", "x-queue-version": 2}
        return {"x-queue-type": "quorum"}

    def queue_arguments(self) -> dict[str, Any]:
        """Arguments for every work queue: its type, bounded redelivery, dead-lettered."""
        arguments = {**self.dead_queue_arguments(), "x-dead-letter-exchange": self.dead_exchange}
        if self.queue_type == "quorum":
            # Our consumers dead-letter with a reason at DELIVERY_LIMIT; the broker's
            # own limit is the backstop should a consumer crash-loop. Classic queues
            # have none: there the consumers count (participants/edge/redeliveries.py).
            arguments["x-delivery-limit"] = UNSETTLED_LIMIT
        return arguments

    def redeliveries_key(self, digest: str) -> str:
        """How often a message without the broker's count (classic queues) was redelivered."""
        return f"{self.namespace}:redeliveries:{digest}"

    @staticmethod
    def event_key(saga_type: str, saga_id: str, status: str) -> str:
        return f"{saga_type}.{saga_id}.{status}"

    @staticmethod
    def breaker_event_key(breaker: str, state: str) -> str:
        """`breaker.<key>.<state>` on the events exchange: a breaker opened or closed."""
        return f"breaker.{breaker}.{state}"

    # Redis: every key of a saga, and its bucket's deadline, outbox and lease
    # keys, carry the bucket's hash tag: one cluster slot per bucket.
    @staticmethod
    def bucket(saga_id: str) -> int:
        return crc32(saga_id.encode()) % BUCKETS

    def tag(self, bucket: int) -> str:
        return f"{{{self.namespace}:b{bucket}}}"

    def _saga(self, kind: str, saga_id: str) -> str:
        return f"{self.namespace}:{kind}:{self.tag(self.bucket(saga_id))}:{saga_id}"

    def saga_key(self, saga_id: str) -> str:
        return self._saga("saga", saga_id)

    def history_key(self, saga_id: str) -> str:
        return self._saga("history", saga_id)

    def outbox_key(self, saga_id: str) -> str:
        return self._saga("outbox", saga_id)

    def rejected_key(self, saga_id: str) -> str:
        """The record of a refused start, kept for the retention period; never a saga."""
        return self._saga("rejected", saga_id)

    def outbox_index(self, bucket: int) -> str:
        """A bucket's sagas with an unconfirmed outbox, by when it was written (ms)."""
        return f"{self.namespace}:outboxes:{self.tag(bucket)}"

    def breaker_state_key(self, breaker: str) -> str:
        """One circuit breaker's shared state (`orchestrator/lua/breaker.lua`), for every orchestrator.

        All of a namespace's breakers share one hash tag, so that one script
        reads or moves a saga's breakers together on Redis Cluster too.
        """
        return f"{self.namespace}:breaker:{{{self.namespace}:breakers}}:{breaker}"

    @property
    def saga_pattern(self) -> str:
        return f"{self.namespace}:saga:*"

    def deadline_key(self, bucket: int) -> str:
        """A bucket's sagas by when they next need attention (ms)."""
        return f"{self.namespace}:deadlines:{self.tag(bucket)}"

    def lease_key(self, bucket: int) -> str:
        """Which orchestrator sweeps the bucket's deadlines and outboxes, while its lease lasts."""
        return f"{self.namespace}:lease:{self.tag(bucket)}"

    def sync_key(self, bucket: int) -> str:
        """Written just before a WAIT, so that the WAIT covers every earlier write in the bucket's slot."""
        return f"{self.namespace}:sync:{self.tag(bucket)}"

    @property
    def members_key(self) -> str:
        """The live orchestrators, by their last heartbeat (ms): who shares the buckets."""
        return f"{self.namespace}:orchestrators"

    @property
    def layout_key(self) -> str:
        """The bucket count the namespace's keys were written with; a process with another refuses to run."""
        return f"{self.namespace}:layout"

    @property
    def queues_key(self) -> str:
        """Every queue declared in this namespace, so that it can be removed whole."""
        return f"{self.namespace}:queues"

    @property
    def counters_key(self) -> str:
        return f"{self.namespace}:counters"

    @property
    def stuck_index(self) -> str:
        """Stuck sagas by when they got stuck (ms), for the metrics: no scan of every saga."""
        return f"{self.namespace}:stuck"

    def participant_key(self, participant: str, *parts: str) -> str:
        """A key of a participant's own, e.g. its record of one saga's step."""
        return ":".join((self.namespace, "participant", participant, *parts))

    def book_key(self, participant: str, book: str, *parts: str) -> str:
        """A key of one of a participant's books; all of one book's keys share a hash tag (a cluster slot)."""
        return self.participant_key(participant, f"{{{self.namespace}:{participant}:{book}}}", *parts)
