"""The AsyncAPI document: valid by the AsyncAPI project's own parser, and saying what the code does."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from statemachines.asyncapi import Server, document
from statemachines.names import Names
from statemachines.sagas import SAGAS
from tests.nodejs import ASYNCAPI_CHECK, node

NAMES = Names("shop")


def refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
        return found + [r for v in value.values() for r in refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in refs(v)]
    return []


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    here: Any = doc
    for part in ref[2:].split("/"):
        here = here[part.replace("~1", "/").replace("~0", "~")]
    return here


def test_the_asyncapi_parser_finds_no_error_or_warning_and_does_find_a_broken_reference() -> None:
    binary = node(ASYNCAPI_CHECK)
    documents = [
        document(NAMES, SAGAS),
        document(NAMES, SAGAS, participant="payment", server=Server("rabbit.example:5671", "/shop", secure=True)),
        document(NAMES, SAGAS, participant="shipping"),
    ]
    broken = document(NAMES, SAGAS)
    del broken["channels"]["replies"]  # an operation's reply now points nowhere
    lines = "".join(json.dumps(doc) + "\n" for doc in [*documents, broken])
    checked = subprocess.run(
        [binary, "validate.mjs"], cwd=ASYNCAPI_CHECK, input=lines.encode(), capture_output=True, timeout=300
    )
    results = [json.loads(line) for line in checked.stdout.decode().splitlines()]
    assert [r["valid"] for r in results] == [True, True, True, False], checked.stdout.decode() + checked.stderr.decode()
    assert any(p["severity"] == 0 for p in results[3]["problems"])
    assert checked.returncode == 1


@pytest.mark.parametrize("participant", [None, "inventory"])
def test_every_reference_resolves(participant: str | None) -> None:
    doc = document(NAMES, SAGAS, participant=participant)
    for ref in refs(doc):
        assert resolve(doc, ref) is not None


def test_the_channels_are_the_names_and_arguments_the_code_declares() -> None:
    doc = document(NAMES, SAGAS)
    channels = doc["channels"]
    amqp = {key: channel.get("bindings", {}).get("amqp", {}) for key, channel in channels.items()}
    assert channels["start"]["address"] == NAMES.start_queue == "shop.start"
    assert channels["replies"]["address"] == NAMES.reply_queue
    assert amqp["commands"]["exchange"] == {
        "name": "shop.commands",
        "type": "direct",
        "durable": True,
        "autoDelete": False,
        "vhost": "/",
    }
    assert amqp["events"]["exchange"]["type"] == amqp["dead"]["exchange"]["type"] == "topic"
    for participant in ("inventory", "payment", "backup_payment", "fraud", "shipping", "flight", "hotel", "car"):
        binding = amqp[f"participant.{participant}"]
        assert binding["queue"]["name"] == NAMES.participant_queue(participant)
        assert binding["x-queue-arguments"] == NAMES.queue_arguments()
        assert binding["x-bound-to"] == {"exchange": "shop.commands", "routingKey": participant}
    assert amqp["start"]["x-queue-arguments"]["x-dead-letter-exchange"] == "shop.dead"
    assert set(channels["commands"]["parameters"]["participant"]["enum"]) == {
        "inventory",
        "payment",
        "backup_payment",
        "fraud",
        "shipping",
        "flight",
        "hotel",
        "car",
    }


def test_a_command_is_answered_on_its_reply_to_and_matched_by_in_reply_to() -> None:
    doc = document(NAMES, SAGAS)
    send = doc["operations"]["sendCommand"]
    assert send["action"] == "send" and send["bindings"]["amqp"]["deliveryMode"] == 2
    assert send["reply"]["address"]["location"] == "$message.payload#/reply_to"
    assert doc["components"]["messages"]["Reply"]["correlationId"]["location"] == "$message.payload#/in_reply_to"
    charge = doc["components"]["messages"]["Command.payment.charge"]
    assert charge["bindings"]["amqp"]["messageType"] == "Command"
    payload = resolve(doc, charge["payload"]["$ref"])
    assert payload["allOf"][1]["properties"]["command"] == {"const": "charge"}


def test_a_participants_document_is_its_side_only() -> None:
    doc = document(NAMES, SAGAS, participant="payment")
    assert set(doc["operations"]) == {"receiveCommand", "sendReply", "deadLetter"}
    assert doc["operations"]["receiveCommand"]["action"] == "receive"
    assert doc["operations"]["receiveCommand"]["bindings"]["amqp"]["ack"] is True
    assert set(doc["channels"]) == {"participant.payment", "replies", "dead", "dead-letters"}
    assert set(doc["channels"]["participant.payment"]["messages"]) == {
        "Command.payment.charge",
        "Command.payment.refund",
    }
    assert "Command.inventory.reserve_stock" not in doc["components"]["messages"]
    dead = doc["components"]["messages"]["DeadLetter"]["headers"]
    assert "x-saga-reason" in dead["required"]


def test_an_unknown_participant_is_refused_in_a_sentence() -> None:
    with pytest.raises(
        ValueError, match="no loaded saga sends commands to participant 'nobody'; known: backup_payment, car"
    ):
        document(NAMES, SAGAS, participant="nobody")
