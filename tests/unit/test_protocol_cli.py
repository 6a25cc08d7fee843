"""`saga schema` and `saga asyncapi` as a user runs them: no broker needed, credentials never printed."""

from __future__ import annotations

import json

import msgspec
import pytest

from orchestrator.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_schema_has_the_messages_and_the_loaded_sagas(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "schema")
    assert code == 0
    defs = json.loads(out)["$defs"]
    assert {"StartSaga", "Command", "Reply", "ErrorInfo", "SagaEvent", "OrderData", "StartSaga.order"} <= set(defs)
    assert "Command.payment.refund" in defs
    code, out, _ = run(capsys, "schema", "--sagas", "tests.unit.test_deadline_exceeded")
    defs = json.loads(out)["$defs"]
    assert "StartSaga.trip" in defs and "Command.taxi.unride" in defs and "StartSaga.order" not in defs


def test_asyncapi_in_yaml_is_the_same_document(capsys: pytest.CaptureFixture[str]) -> None:
    _, as_json, _ = run(capsys, "asyncapi", "--namespace", "shop")
    code, as_yaml, _ = run(capsys, "asyncapi", "--namespace", "shop", "--format", "yaml")
    assert code == 0
    assert as_yaml.startswith("asyncapi: 3.0.0")
    assert msgspec.yaml.decode(as_yaml) == json.loads(as_json)
    assert json.loads(as_json)["channels"]["start"]["address"] == "shop.start"


def test_asyncapi_names_the_broker_without_its_password(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "asyncapi", "--amqp-url", "amqps://app:s3cret@rabbit.internal/shop%2Fprod")
    assert code == 0
    assert "s3cret" not in out
    server = json.loads(out)["servers"]["broker"]
    assert (server["host"], server["protocol"]) == ("rabbit.internal:5671", "amqps")
    assert json.loads(out)["channels"]["start"]["bindings"]["amqp"]["queue"]["vhost"] == "shop/prod"


def test_asyncapi_for_an_unknown_participant_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "asyncapi", "--participant", "nobody")
    assert (code, out) == (1, "")
    assert err.startswith("saga: no loaded saga sends commands to participant 'nobody'; known: ")
    assert len(err.strip().splitlines()) == 1
