"""The RESP our batches write must be byte for byte what redis-py would write."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection

from participants.edge.batching import pack

COMMANDS = [
    ("HGET", "ns:saga:{abc}", "doc"),
    ("EVALSHA", "a" * 40, 2, "k1", "k2", 0, 17, b'{"data": "\xc3\xa9"}', "caf\u00e9", 1763770000.125, -3, b""),
    ("SET", b"\x00\r\n", "x" * 70_000),
]


@pytest.mark.parametrize("command", COMMANDS, ids=["hget", "evalsha", "binary"])
def test_one_command_packs_as_redis_py_packs_it(command: tuple[object, ...]) -> None:
    assert pack([command]) == b"".join(Connection().pack_commands([command]))


def test_a_batch_is_its_commands_in_order() -> None:
    assert pack(COMMANDS) == b"".join(pack([c]) for c in COMMANDS)
