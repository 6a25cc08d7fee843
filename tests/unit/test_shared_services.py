"""No test stops, restarts, kills, reconfigures or flushes the shared RabbitMQ or Redis: only private ones.

Anything that would is done through `tests/integration/private.py`, whose
nodes and servers have their own names, ports and data directories; this
looks through every other test file for the commands that would do it to a
shared service.
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
PRIVATE = TESTS / "integration" / "private.py"
# Server commands and the client calls that stop, restart or reconfigure a service, or flush its data.
FORBIDDEN = re.compile(
    r"rabbitmqctl|rabbitmq-server|rabbitmq-plugins|redis-server|redis-cli|systemctl|service rabbitmq"
    r"|docker (?:compose )?(?:stop|restart|kill|rm)|\.shutdown\(|flushall|flushdb|config_set\(|acl_setuser"
    r"|add_user|set_permissions|set_policy|\"SHUTDOWN\"|'SHUTDOWN'|\"DEBUG\"",
    re.IGNORECASE,
)
# Where the words appear only in the sentence that says how to start the services.
ADVICE = {TESTS / "integration" / "conftest.py"}
# Where they appear only in the text `saga access` prints, which the test reads and never runs.
PRINTED = {TESTS / "unit" / "test_access.py"}


def test_only_the_private_services_are_ever_stopped_or_reconfigured() -> None:
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        if path in (PRIVATE, Path(__file__)) or path in ADVICE or path in PRINTED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if FORBIDDEN.search(line):
                found.append(f"{path.relative_to(TESTS)}:{number}: {line.strip()}")
    assert not found, "use tests/integration/private.py for these:\n" + "\n".join(found)
