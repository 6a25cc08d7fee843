"""`saga access` and who may send a reply: what each user may touch, checked against the names the code uses."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from orchestrator.access import definitions, grants, rabbitmqctl, sender_problem
from orchestrator.cli import main
from orchestrator.cli.access import vhost_of
from statemachines.names import Names

names = Names("shop")


def _grant(user: str) -> dict[str, re.Pattern[str]]:
    [grant] = [g for g in grants(names, ["pay", "ship", "pay_more"]) if g.user == user]
    # RabbitMQ matches with Erlang's re (PCRE); for these patterns Python's re agrees.
    return {what: re.compile(getattr(grant, what)) for what in ("configure", "write", "read")}


def test_a_participant_reads_and_declares_only_its_queue_and_writes_only_replies_and_dead_letters() -> None:
    rights = _grant(names.participant_user("pay"))
    own = names.participant_queue("pay")
    for other in (names.participant_queue("ship"), names.participant_queue("pay_more"), names.reply_queue, "x" + own):
        assert not rights["read"].search(other) and not rights["configure"].search(other)
    assert rights["read"].search(own) and rights["configure"].search(own)
    assert rights["write"].search(names.replies_exchange) and rights["write"].search(names.dead_exchange)
    # The default exchange reaches every queue, and the queues themselves are written to only to bind them.
    for refused in ("amq.default", names.commands_exchange, names.events_exchange, names.reply_queue, own):
        assert not rights["write"].search(refused), refused
    # It binds nothing: no read on an exchange, so it cannot bind its queue to another's commands.
    assert not rights["read"].search(names.commands_exchange)


def test_the_orchestrator_has_its_namespace_and_the_default_exchange_but_no_other_namespace() -> None:
    rights = _grant(names.orchestrator_user)
    for resource in (names.start_queue, names.reply_queue, names.participant_queue("pay"), names.commands_exchange):
        assert all(rights[what].search(resource) for what in rights)
    assert rights["write"].search("amq.default")
    assert not any(rights[what].search(Names("shop2").start_queue) for what in rights)


def test_a_reply_is_its_participants_only_if_sent_as_its_user() -> None:
    assert sender_problem(names, "pay", "shop.participant.pay") is None
    assert sender_problem(names, "pay", "shop.participant.ship") == (
        "it was sent as RabbitMQ user 'shop.participant.ship', not as 'shop.participant.pay' (--authenticate-replies)"
    )
    assert sender_problem(names, "pay", None) == (
        "it carries no AMQP user-id; --authenticate-replies takes only one sent as 'shop.participant.pay'"
    )
    assert sender_problem(names, "pay", "shop.participant.pay ") is not None


def test_the_commands_carry_no_password_unless_asked_and_parse_as_shell() -> None:
    every = grants(names, ["pay"])
    text = rabbitmqctl(every, "/")
    adds = [shlex.split(line) for line in text.splitlines() if line.startswith("rabbitmqctl add_user")]
    assert adds == [
        ["rabbitmqctl", "add_user", "shop.orchestrator"],
        ["rabbitmqctl", "add_user", "shop.participant.pay"],
    ]
    text = rabbitmqctl(every, "prod", {g.user: f"pw'{g.user}" for g in every})
    sets = [shlex.split(line) for line in text.splitlines() if line.startswith("rabbitmqctl set_permissions")]
    assert sets[1] == [
        "rabbitmqctl",
        "set_permissions",
        "-p",
        "prod",
        "shop.participant.pay",
        r"^shop\.participant\.pay$",
        r"^(shop\.reply-exchange|shop\.dead)$",
        r"^shop\.participant\.pay$",
    ]
    assert "pw'shop.participant.pay" in shlex.split(text.splitlines()[-2])


def test_the_definitions_declare_the_topology_the_processes_expect() -> None:
    doc = definitions(names, ["pay", "ship"], "v1")
    assert all(user["password_hash"] == "" for user in doc["users"])
    queues = {q["name"]: q["arguments"] for q in doc["queues"]}
    assert queues[names.participant_queue("ship")] == names.queue_arguments()
    assert queues[names.dead_queue] == names.dead_queue_arguments()
    bound = {(b["source"], b["destination"], b["routing_key"]) for b in doc["bindings"]}
    assert (names.commands_exchange, names.participant_queue("pay"), "pay") in bound
    assert (names.replies_exchange, names.reply_queue, names.reply_queue) in bound
    assert {p["vhost"] for p in doc["permissions"]} == {"v1"}


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://u:p@h:5672/", "/"),
        ("amqp://h", "/"),
        ("amqp://h/prod", "prod"),
        ("amqp://h/%2F", "/"),
        ("amqp://a,b/x", "x"),
    ],
)
def test_the_vhost_is_the_urls(url: str, vhost: str) -> None:
    assert vhost_of(url) == vhost


def test_saga_access_prints_for_the_loaded_sagas_and_never_the_url_password(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["access", "--namespace", "shop", "--amqp-url", "amqp://admin:s3cret@127.0.0.1:5672/shopv"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "rabbitmqctl add_user shop.participant.payment\n" in out and "-p shopv" in out
    assert main([*argv, "--definitions"]) == 0
    out = capsys.readouterr().out
    assert names.participant_queue("payment") in {q["name"] for q in json.loads(out)["queues"]}
    assert main([*argv, "--generate-passwords"]) == 0
    out = capsys.readouterr().out
    first, second = [shlex.split(line) for line in out.splitlines() if line.startswith("rabbitmqctl add_user")][:2]
    assert len(first) == 4 and len(first[3]) >= 24 and first[3] != second[3]
    assert "s3cret" not in out


def test_a_bad_authenticate_replies_setting_is_one_sentence(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAGA_AUTHENTICATE_REPLIES", "maybe")
    assert main(["orchestrator"]) == 1
    assert capsys.readouterr().err == "saga: SAGA_AUTHENTICATE_REPLIES must be 1 or 0 (true/false, yes/no, on/off)\n"


def test_the_definitions_follow_the_queue_type() -> None:
    classic = Names("shop", "classic")
    queues = {q["name"]: q["arguments"] for q in definitions(classic, ["pay"], "/")["queues"]}
    assert queues[classic.participant_queue("pay")] == classic.queue_arguments()
    assert queues[classic.dead_queue] == classic.dead_queue_arguments()
    assert all(args.get("x-queue-type") != "quorum" for args in queues.values())
