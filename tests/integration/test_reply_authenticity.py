"""Per-participant RabbitMQ users, as `saga access` sets them up: a participant cannot answer for another.

On a private RabbitMQ node (users and permissions are the node's, so the
shared one is left alone), with the shared Redis under the test's
namespace: the commands `saga access --generate-passwords` prints are run
against the node, the real `saga orchestrator --authenticate-replies` runs
as its user, and each participant as its own. A forged reply is refused
with its reason, written into the saga's history and dead-lettered, and the
saga goes on as its real participant answers; a participant's user may
not read another's queue nor publish into it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import msgspec
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.exceptions import ChannelAccessRefused, ChannelPreconditionFailed

from orchestrator.client import SagaClient
from orchestrator.namespace import drop
from participants.edge.amqp import Broker, Envelope, login_user
from participants.edge.settings import Settings
from statemachines.dsl import Saga, Step
from statemachines.messages import Command, ErrorInfo, Reply, encode
from tests.integration.conftest import eventually, spawn
from tests.integration.private import RabbitNode, rabbit_node
from tests.integration.scripted import Scripted, cli, now, open_store, take_dead_letters
from tests.integration.test_node_participant import node_payment

pytestmark = pytest.mark.slow
MODULE = "tests.integration.test_reply_authenticity"

order = Saga(
    "au_order",
    steps=[
        Step("charge", participant="au_pay", command="charge", compensation="refund", timeout=30.0),
        Step("ship", participant="au_ship", command="ship", compensation="unship", timeout=30.0),
    ],
)


# The Node.js reference participant, as a least-privilege user too.
node_order = Saga(
    "au_node_order",
    steps=[Step("pay", participant="payment", command="charge", compensation="refund", timeout=30.0)],
)


def url(port: int, user: str, password: str) -> str:
    return f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{port}/"


async def apply_access(settings: Settings, node: RabbitNode) -> dict[str, str]:
    """Run what `saga access --generate-passwords` prints against the node; the users' passwords."""
    printed = await cli(settings, "access", "--sagas", MODULE, "--generate-passwords")
    assert printed.returncode == 0, printed.stderr
    return await node.run_script(printed.stdout)


async def refused(channel: AbstractChannel, attempt: Any) -> str:
    """What the broker says when it refuses `attempt(channel)` (it closes the channel)."""
    with pytest.raises((ChannelAccessRefused, ChannelPreconditionFailed)) as caught:
        await attempt(channel)
    return str(caught.value)


async def test_a_participant_cannot_answer_for_another_nor_read_its_queue(tmp_path: Path, settings: Settings) -> None:
    names = settings.names
    async with rabbit_node(tmp_path) as node:
        admin = dataclasses.replace(settings, amqp_url=node.url)
        passwords = await apply_access(admin, node)
        participants = ("au_pay", "au_ship", "payment")
        assert set(passwords) == {names.orchestrator_user, *map(names.participant_user, participants)}

        def as_user(user: str) -> Settings:
            return dataclasses.replace(settings, amqp_url=url(node.port, user, passwords[user]))

        orchestrator = as_user(names.orchestrator_user)
        log = (tmp_path / "orchestrator.log").open("wb")
        process = spawn(orchestrator, "orchestrator", "--sagas", MODULE, "--authenticate-replies", log=log)
        client: SagaClient | None = None
        workers: list[Scripted] = []
        try:
            # The orchestrator declares and binds the topology; the participants' users may only use it.
            admin_connection = await aio_pika.connect(node.url)

            async def consumed() -> bool:
                channel = await admin_connection.channel()
                try:
                    queue = await channel.declare_queue(names.reply_queue, passive=True)
                    return queue.declaration_result.consumer_count > 0
                except Exception:
                    return False

            await eventually(consumed, timeout=60)
            await admin_connection.close()

            holding: set[str] = set()

            async def ship_script(worker: Scripted, command: Command, body: bytes) -> None:
                if command.saga_id in holding and command.action == "do":
                    worker.hold(command, body)
                else:
                    await worker.send(command, body)

            pay = Scripted("au_pay")
            pay.act("charge", {"charged": 10})
            pay.act("refund", {})
            ship = Scripted("au_ship", ship_script)
            ship.act("ship", {"tracking": "T-1"})
            ship.act("unship", {})
            for worker in (pay, ship):
                await worker.start(as_user(names.participant_user(worker.name)))
                workers.append(worker)
            client = await SagaClient.connect(orchestrator)

            # Normal replies, each from its participant's own user, go through end to end.
            done = await client.start("au_order", {"customer": "c-1"}, wait=True, timeout=60)
            assert done.status == "completed", done
            assert done.data == {"customer": "c-1", "charged": 10, "tracking": "T-1"}

            # The ship step waits for its participant; au_pay's user tries to answer for it.
            holding.add("forged")
            waiting = asyncio.create_task(
                client.start("au_order", {"customer": "c-2"}, "forged", wait=True, timeout=90)
            )
            await eventually(lambda: now(len(ship.held) == 1), timeout=30)
            [(command, _)] = ship.held
            forged = Reply(
                message_id=f"{command.message_id}/forged",
                in_reply_to=command.message_id,
                saga_id=command.saga_id,
                step="ship",
                action="do",
                outcome="failure",
                error=ErrorInfo("out_of_stock", "forged"),
                participant="au_ship",
            )
            pay_user = names.participant_user("au_pay")
            ship_user = names.participant_user("au_ship")
            forger = await aio_pika.connect(as_user(pay_user).amqp_url)
            try:

                async def publish(channel: AbstractChannel, reply: Reply, **properties: Any) -> None:
                    exchange = await channel.get_exchange(names.replies_exchange, ensure=False)
                    await exchange.publish(aio_pika.Message(encode(reply), **properties), names.reply_queue)

                # The broker itself refuses a user-id that is not the login's.
                channel = await forger.channel(publisher_confirms=True)
                why = await refused(channel, lambda c: publish(c, forged, user_id=ship_user))
                assert "PRECONDITION_FAILED" in why and "user_id" in why
                # Sent as itself (or with no user-id at all), the orchestrator refuses it: the user is not au_ship's.
                channel = await forger.channel(publisher_confirms=True)
                await publish(channel, forged, user_id=pay_user)
                await publish(channel, msgspec.structs.replace(forged, message_id=f"{command.message_id}/anon"))
                # Naming itself, it is au_pay's reply, but the step is au_ship's.
                own = await Broker.open(as_user(pay_user).amqp_url, names)
                own.user_id = login_user(own.connection)
                try:
                    mine = msgspec.structs.replace(
                        forged, message_id=f"{command.message_id}/mine", participant="au_pay"
                    )
                    await own.publish([_envelope(names.replies_exchange, names.reply_queue, mine)])
                finally:
                    await own.close()

                # Least privilege: au_pay's user may not read au_ship's queue, publish into it, or bind to its commands.
                ship_queue = names.participant_queue("au_ship")
                channel = await forger.channel()
                queue = await channel.declare_queue(ship_queue, passive=True)  # asking whether it exists is allowed
                assert "ACCESS_REFUSED" in await refused(channel, lambda _: queue.get(fail=False))
                channel = await forger.channel()
                queue = await channel.declare_queue(ship_queue, passive=True)

                async def take(message: AbstractIncomingMessage) -> None:
                    await message.ack()

                assert "ACCESS_REFUSED" in await refused(channel, lambda _: queue.consume(take))
                channel = await forger.channel(publisher_confirms=True)
                fake = aio_pika.Message(b"{}")
                why = await refused(channel, lambda c: c.default_exchange.publish(fake, ship_queue))
                assert "ACCESS_REFUSED" in why and "amq.default" in why
                channel = await forger.channel()
                own_queue = await channel.declare_queue(names.participant_queue("au_pay"), passive=True)
                why = await refused(channel, lambda _: own_queue.bind(names.commands_exchange, "au_ship"))
                assert "ACCESS_REFUSED" in why
            finally:
                await forger.close()

            expected = {
                f"reply from au_ship refused: it was sent as RabbitMQ user {pay_user!r}, "
                f"not as {ship_user!r} (--authenticate-replies)",
                f"reply from au_ship refused: it carries no AMQP user-id; "
                f"--authenticate-replies takes only one sent as {ship_user!r}",
                "reply from au_pay refused: step 'ship' is answered by 'au_ship', not by 'au_pay'",
            }
            letters = await take_dead_letters(admin, 3, timeout=30)
            assert {letter.headers["x-saga-reason"] for letter in letters} == expected
            store = await open_store(admin)
            try:
                history = await store.history("forged")
                assert expected <= {h.detail for h in history if h.event == "refused_reply"}
                assert (await store.counters())["refused_replies"] >= 3
                inst = await store.load("forged")
                assert inst is not None and inst.status == "running" and inst.step == "ship"
            finally:
                await store.redis.aclose()
            shown = await cli(admin, "show", "forged")
            assert all(reason in shown.stdout for reason in expected), shown.stdout

            # The real participant answers, and the saga goes on as if nothing had been forged.
            assert [c.message_id for c in await ship.release()] == [command.message_id]
            outcome = await waiting
            assert outcome.status == "completed", outcome
            assert outcome.data == {"customer": "c-2", "charged": 10, "tracking": "T-1"}
            assert pay.calls["refund"] == [] and ship.calls["unship"] == []
        finally:
            for worker in workers:
                await worker.close()
            if client is not None:
                await client.close()
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()
            await drop(admin, {"au_pay", "au_ship"})
    text = (tmp_path / "orchestrator.log").read_text(errors="replace")
    assert "--authenticate-replies" in text
    assert not any(password in text for password in passwords.values())


def _envelope(exchange: str, key: str, reply: Reply) -> Envelope:
    return Envelope(exchange, key, encode(reply), reply.message_id, reply.saga_id, "Reply")


async def test_with_the_definitions_loaded_participants_start_before_the_orchestrator(
    tmp_path: Path, settings: Settings
) -> None:
    """`saga access --definitions` declares the topology too: least-privilege participants need nobody first."""
    names = settings.names
    async with rabbit_node(tmp_path) as node:
        admin = dataclasses.replace(settings, amqp_url=node.url)
        printed = await cli(admin, "access", "--sagas", MODULE, "--definitions")
        assert printed.returncode == 0, printed.stderr
        assert {user["password_hash"] for user in json.loads(printed.stdout)["users"]} == {""}
        definitions = tmp_path / "definitions.json"
        definitions.write_text(printed.stdout)
        await node.ctl("import_definitions", str(definitions))
        users = [names.orchestrator_user, *map(names.participant_user, ("au_pay", "au_ship", "payment"))]
        passwords = {user: f"pw-{n}" for n, user in enumerate(users)}

        async def passwords_set() -> bool:
            try:  # the import goes on in the background: the users appear when it is done
                for user, password in passwords.items():
                    await node.set_password(user, password)
            except RuntimeError:
                return False
            return True

        await eventually(passwords_set, timeout=60, every=0.5)

        def as_user(user: str) -> Settings:
            return dataclasses.replace(settings, amqp_url=url(node.port, user, passwords[user]))

        workers = [Scripted("au_pay"), Scripted("au_ship")]
        workers[0].act("charge", {"charged": 5})
        workers[1].act("ship", {"tracking": "T-2"})
        client: SagaClient | None = None
        log = (tmp_path / "orchestrator.log").open("wb")
        process: subprocess.Popen[bytes] | None = None
        try:
            for worker in workers:  # no orchestrator has run: the definitions declared what they use
                await worker.start(as_user(names.participant_user(worker.name)))
            async with node_payment(as_user(names.participant_user("payment"))):
                orchestrator = as_user(names.orchestrator_user)
                process = spawn(orchestrator, "orchestrator", "--sagas", MODULE, "--authenticate-replies", log=log)
                client = await SagaClient.connect(orchestrator)
                done = await client.start("au_order", {"customer": "c-3"}, wait=True, timeout=60)
                assert done.status == "completed", done
                assert done.data == {"customer": "c-3", "charged": 5, "tracking": "T-2"}
                # The Node.js participant's replies carry its login as user_id too.
                paid = await client.start("au_node_order", {"customer_id": "c-4", "amount": 100}, wait=True, timeout=60)
                assert paid.status == "completed", paid
                assert "charge_id" in paid.data
        finally:
            for worker in workers:
                await worker.close()
            if client is not None:
                await client.close()
            if process is not None:
                process.terminate()
                try:
                    await asyncio.to_thread(process.wait, 30)
                except subprocess.TimeoutExpired:
                    process.kill()
            log.close()
            await drop(admin, {"au_pay", "au_ship", "payment"})
    # Declared exactly as the orchestrator declares them: no argument differs.
    assert "PRECONDITION_FAILED" not in (tmp_path / "orchestrator.log").read_text(errors="replace")
