"""Every queue, exchange and Redis key name, under one namespace prefix.

Two deployments (or two test runs) with different namespaces share a broker
and a Redis without seeing each other. The names are part of the protocol,
so they live in the pure core where the orchestrator, the participants and
programs in other languages can all read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from zlib import crc32

DEFAULT_NAMESPACE = "saga"
# A message redelivered this often is poison: it is dead-lettered, never looped.
DELIVERY_LIMIT = 5
DEADLINE_SHARDS = 4


@dataclass(frozen=True)
class Names:
    namespace: str = DEFAULT_NAMESPACE

    # RabbitMQ
    @property
    def start_queue(self) -> str:
        return f"{self.namespace}.start"

    @property
    def reply_queue(self) -> str:
        return f"{self.namespace}.replies"

    @property
    def commands_exchange(self) -> str:
        return f"{self.namespace}.commands"

    @property
    def events_exchange(self) -> str:
        return f"{self.namespace}.events"

    @property
    def dead_exchange(self) -> str:
        return f"{self.namespace}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.namespace}.dead-letters"

    def participant_queue(self, participant: str) -> str:
        return f"{self.namespace}.participant.{participant}"

    def queue_arguments(self) -> dict[str, Any]:
        """Arguments for every work queue: quorum, bounded redelivery, dead-lettered."""
        return {
            "x-queue-type": "quorum",
            # Our consumers dead-letter with a reason at DELIVERY_LIMIT; the
            # broker's own limit is the backstop should a consumer crash-loop.
            "x-delivery-limit": DELIVERY_LIMIT * 2,
            "x-dead-letter-exchange": self.dead_exchange,
        }

    @staticmethod
    def event_key(saga_type: str, saga_id: str, status: str) -> str:
        return f"{saga_type}.{saga_id}.{status}"

    # Redis: the {saga_id} hash tag keeps one saga's keys in one cluster slot.
    def saga_key(self, saga_id: str) -> str:
        return f"{self.namespace}:saga:{{{saga_id}}}"

    def history_key(self, saga_id: str) -> str:
        return f"{self.namespace}:history:{{{saga_id}}}"

    def outbox_key(self, saga_id: str) -> str:
        return f"{self.namespace}:outbox:{{{saga_id}}}"

    @property
    def outbox_index(self) -> str:
        """Sagas with an unconfirmed outbox, by when it was written (ms)."""
        return f"{self.namespace}:outboxes"

    @property
    def saga_pattern(self) -> str:
        return f"{self.namespace}:saga:*"

    def deadline_key(self, shard: int) -> str:
        return f"{self.namespace}:deadlines:{shard}"

    def deadline_shard(self, saga_id: str) -> int:
        return crc32(saga_id.encode()) % DEADLINE_SHARDS

    @property
    def queues_key(self) -> str:
        """Every queue declared in this namespace, so that it can be removed whole."""
        return f"{self.namespace}:queues"

    @property
    def counters_key(self) -> str:
        return f"{self.namespace}:counters"

    def participant_key(self, participant: str, *parts: str) -> str:
        """A key of a participant's own, e.g. its record of one saga's step."""
        return ":".join((self.namespace, "participant", participant, *parts))
