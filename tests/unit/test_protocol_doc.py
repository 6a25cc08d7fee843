"""docs/protocol.md says what the code does: every field, error code, queue argument and conformance rule is in it."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from orchestrator.tools.conformance import RULES
from statemachines.messages import (
    ERROR_CODES,
    SIGNAL_REFUSALS,
    BreakerEvent,
    Command,
    ErrorInfo,
    Reply,
    SagaEvent,
    SignalResult,
    SignalSaga,
    StartSaga,
)
from statemachines.names import MAX_ID, MAX_NAME, MAX_QUEUE, Names

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "protocol.md").read_text()


def section(heading: str) -> str:
    """The text under the heading that starts with `heading`, up to the next heading of any level."""
    match = re.search(rf"^#+ {re.escape(heading)}.*?$(.*?)(?=^#)", DOC, flags=re.M | re.S)
    assert match, f"no section {heading!r} in docs/protocol.md"
    return match.group(1)


@pytest.mark.parametrize(
    ("kind", "heading"),
    [
        (StartSaga, "3.2"),
        (Command, "3.3"),
        (Reply, "3.4"),
        (ErrorInfo, "3.5"),
        (SagaEvent, "3.6"),
        (SignalSaga, "3.8"),
        (SignalResult, "3.9"),
        (BreakerEvent, "3.10"),
    ],
)
def test_every_field_of_every_message_has_a_row(kind: type[msgspec.Struct], heading: str) -> None:
    fields = section(heading).split("Codes with a meaning")[0].split("The codes of a refused signal")[0]
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", fields, flags=re.M))
    assert rows == set(kind.__struct_fields__)


def test_every_error_code_with_a_meaning_is_in_the_codes_table() -> None:
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", DOC.split("Codes with a meaning", 1)[1], flags=re.M))
    assert set(ERROR_CODES) <= rows


def test_every_code_of_a_refused_signal_is_in_its_table() -> None:
    table = section("3.9").split("The codes of a refused signal", 1)[1]
    assert set(re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M)) == set(SIGNAL_REFUSALS)


def test_every_queue_the_orchestrator_consumes_is_in_the_queue_table() -> None:
    names = Names("ns")
    table = section("2.2")
    for queue in (names.start_queue, names.reply_queue, names.signals_queue):
        assert f"| `{queue.replace('ns.', '<ns>.')}` |" in table


def test_the_work_queue_arguments_are_the_ones_declared() -> None:
    arguments = Names("ns").queue_arguments()
    table = section("2.2")
    for name, value in arguments.items():
        shown = f'`"{value.replace("ns.", "<ns>.")}"`' if isinstance(value, str) else f"`{value}`"
        assert f"| `{name}` | {shown}" in table, name
    assert len(re.findall(r"^\| `x-", table, flags=re.M)) == len(arguments)


def test_every_rule_the_conformance_check_cites_is_a_section() -> None:
    headings = set(re.findall(r"^#+ (\d+(?:\.\d+)?)\.? ", DOC, flags=re.M))
    assert set(RULES.values()) <= headings
    # Each obligation but the ones that cannot be driven from outside has a check.
    # (5.11 needs a user per participant on the broker: test_reply_authenticity.py shows it on a node of its own.)
    unchecked = {"5.6", "5.10", "5.11"}
    assert {h for h in headings if h.startswith("5.")} - unchecked == set(RULES.values()) - {"4"}


def test_the_bounds_are_the_ones_the_decoders_hold() -> None:
    bounds = section("3.1")
    assert f"1 to {MAX_ID} characters" in bounds
    assert f"1 to {MAX_NAME} characters" in bounds
    assert f"1 to {MAX_QUEUE} characters" in bounds
    message_id = msgspec.json.schema(Command)["$defs"]["Command"]["properties"]["message_id"]
    assert f"at most {message_id['maxLength']} characters" in bounds
