"""Several RabbitMQ nodes in one setting: the list is split, checked, and never shows a password."""

from __future__ import annotations

import asyncio

import pytest
from aiormq.exceptions import AMQPConnectionError

from participants.edge.connections import MultiHostConnection, Unreachable, connect_amqp, redact
from participants.edge.settings import BadSetting, Settings, split_urls


def test_comma_separated_urls_are_each_a_node() -> None:
    assert split_urls("amqp://u:p@h1:5672/, amqp://u:p@h2:5673/") == ["amqp://u:p@h1:5672/", "amqp://u:p@h2:5673/"]


def test_one_url_with_several_hosts_shares_user_and_virtual_host() -> None:
    assert split_urls("amqp://u:p@h1:5672,h2:5673,h3/shop") == [
        "amqp://u:p@h1:5672/shop",
        "amqp://u:p@h2:5673/shop",
        "amqp://u:p@h3/shop",
    ]


def test_a_single_url_is_kept_as_it_is() -> None:
    assert split_urls("amqp://guest:guest@127.0.0.1:5672/") == ["amqp://guest:guest@127.0.0.1:5672/"]


def test_settings_accept_the_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGA_AMQP_URL", "amqp://u:p@h1:5672/,amqp://u:p@h2:5673/")
    assert split_urls(Settings.from_env().amqp_url) == ["amqp://u:p@h1:5672/", "amqp://u:p@h2:5673/"]


def test_a_bad_url_in_the_list_is_one_sentence_without_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGA_AMQP_URL", "amqp://u:s3cret@h1:5672/,amqp://u:s3cret@h2:abc/")
    with pytest.raises(BadSetting, match=r"number 2\) has a port that is not a number") as caught:
        Settings.from_env()
    assert "s3cret" not in str(caught.value)


def test_redact_hides_every_password() -> None:
    assert redact("amqp://u:s3cret@h1:5672,h2:5673/") == "amqp://u:***@h1:5672/, amqp://u:***@h2:5673/"


def test_each_reconnect_moves_to_the_next_node() -> None:
    async def urls_tried() -> list[str]:
        connection = MultiHostConnection(["amqp://u:p@127.0.0.1:1/", "amqp://u:p@127.0.0.1:2/"])
        seen = []
        for _ in range(3):
            with pytest.raises(AMQPConnectionError):
                await connection._RobustConnection__connect_transport()  # type: ignore[attr-defined]
            seen.append(f"{connection.url.port}")
        return seen

    assert asyncio.run(urls_tried()) == ["1", "2", "1"]


def test_no_node_answering_names_them_all_without_passwords() -> None:
    with pytest.raises(Unreachable) as caught:
        asyncio.run(connect_amqp("amqp://u:s3cret@127.0.0.1:1,127.0.0.1:2/", connect_timeout=1))
    assert "127.0.0.1:1/, amqp://u:***@127.0.0.1:2/" in str(caught.value)
    assert "s3cret" not in str(caught.value)
