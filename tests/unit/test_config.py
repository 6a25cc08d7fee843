"""Settings come from flags, then the environment, then defaults; secrets never show."""

from __future__ import annotations

import pytest

from participants.edge.connections import Unreachable, redact
from participants.edge.settings import BadSetting, Settings


def test_flags_win_over_the_environment_which_wins_over_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGA_AMQP_URL", "amqp://u:p@rabbit:5672/")
    monkeypatch.setenv("SAGA_NAMESPACE", "shop")
    monkeypatch.setenv("SAGA_MAX_MESSAGE_BYTES", "2048")
    monkeypatch.delenv("SAGA_REDIS_URL", raising=False)
    settings = Settings.from_env(namespace="flagged")
    assert settings.amqp_url == "amqp://u:p@rabbit:5672/"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.namespace == "flagged"
    assert settings.max_message_bytes == 2048
    assert settings.names.start_queue == "flagged.start"


@pytest.mark.parametrize("value", ["abc", "0", "-5"])
def test_a_bad_limit_is_one_sentence_naming_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SAGA_RETENTION_SECONDS", value)
    with pytest.raises(BadSetting, match="SAGA_RETENTION_SECONDS must be a positive whole number"):
        Settings.from_env()


def test_passwords_are_hidden_in_urls_and_errors() -> None:
    assert redact("amqps://guest:s3cret@mq.example:5671/vh") == "amqps://guest:***@mq.example:5671/vh"
    assert redact("rediss://:s3cret@cache:6380/0") == "rediss://:***@cache:6380/0"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    message = str(Unreachable.rabbitmq("amqp://guest:s3cret@mq:5672/", "refused"))
    assert "s3cret" not in message and "guest:***@mq:5672" in message


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("SAGA_AMQP_URL", "amqp://guest:s3cret@127.0.0.1:abc/"),
        ("SAGA_REDIS_URL", "redis://:s3cret@127.0.0.1:99999/0"),
        ("SAGA_AMQP_URL", "127.0.0.1:5672"),
    ],
)
def test_a_url_that_cannot_be_parsed_is_one_sentence_without_its_password(
    monkeypatch: pytest.MonkeyPatch, variable: str, url: str
) -> None:
    monkeypatch.setenv(variable, url)
    with pytest.raises(BadSetting, match=variable) as caught:
        Settings.from_env()
    assert "s3cret" not in str(caught.value)


def test_redact_survives_a_port_that_is_not_a_number() -> None:
    assert redact("amqp://guest:s3cret@mq:abc/") == "amqp://guest:***@mq:abc/"


def test_the_queue_type_comes_from_the_flag_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAGA_QUEUE_TYPE", raising=False)
    assert Settings.from_env().names.queue_arguments()["x-queue-type"] == "quorum"
    monkeypatch.setenv("SAGA_QUEUE_TYPE", "classic")
    classic = Settings.from_env().names
    # Durable like quorum, dead-lettered alike; no broker delivery limit: the consumers count.
    assert classic.queue_arguments() == {
        "x-queue-type": "classic",
        "x-queue-version": 2,
        "x-dead-letter-exchange": "saga.dead",
    }
    assert classic.dead_queue_arguments()["x-queue-type"] == "classic"
    assert Settings.from_env(queue_type="quorum").queue_type == "quorum"


def test_a_queue_type_that_is_neither_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGA_QUEUE_TYPE", "stream")
    with pytest.raises(BadSetting, match="SAGA_QUEUE_TYPE must be quorum or classic, got 'stream'"):
        Settings.from_env()
