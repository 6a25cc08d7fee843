"""Signals travel: CLI, client, web API and a raw message on `<ns>.signals`; every refusal is answered at once.

A refused signal is answered to its reply_to (when allowed), dead-lettered
with its reason so that it can be replayed, and written into the history of
the saga it names. (Signals that a waiting saga accepts are in
test_constructs_live.py.)
"""

from __future__ import annotations

import asyncio
import json
import uuid

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractIncomingMessage

from orchestrator.cli.common import EXIT_SIGNAL_REFUSED
from orchestrator.client import SignalRefused
from statemachines.messages import SignalResult, SignalSaga, decode, encode
from statemachines.sagas import SAGAS
from tests.integration.conftest import Stack
from tests.integration.scripted import cli, open_store, take_dead_letters
from tests.integration.test_end_to_end import order
from tests.integration.webserver import TOKEN, serving


def reason_of(letter: AbstractIncomingMessage) -> str:
    value = (letter.headers or {})["x-saga-reason"]
    return value.decode() if isinstance(value, bytes) else str(value)


async def test_a_signal_for_an_unknown_saga_is_refused_at_once_and_kept_to_replay(stack: Stack) -> None:
    settings = stack.settings
    done = await cli(settings, "signal", "no-such-saga", "bank_confirmed", "--data", '{"ref": "b-1"}', "--wait")
    assert done.returncode == EXIT_SIGNAL_REFUSED, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["outcome"], answer["error"]["code"]) == ("refused", "unknown_saga")
    assert answer["saga_id"] == "no-such-saga"
    assert "signal refused: unknown_saga" in done.stderr and "Traceback" not in done.stderr
    [letter] = await take_dead_letters(settings, 1)
    assert reason_of(letter).startswith("unknown_saga: no saga 'no-such-saga'")
    assert (letter.headers or {})["x-saga-queue"] == settings.names.signals_queue
    kept = decode(SignalSaga, letter.body)
    assert (kept.name, kept.data) == ("bank_confirmed", {"ref": "b-1"})


async def test_a_signal_no_saga_waits_for_is_refused_into_the_sagas_history(stack: Stack) -> None:
    ended = await stack.run("order", order())
    assert ended.status == "completed"
    with pytest.raises(SignalRefused) as refused:
        await stack.client.signal(ended.saga_id, "bank_confirmed", {"ref": "b-1"}, "sig-1", wait=True)
    assert refused.value.code == "finished" and refused.value.result.signal_id == "sig-1"
    store = await open_store(stack.settings)
    try:
        entries = [h for h in await store.history(ended.saga_id) if h.event == "refused_signal"]
        counters = await store.counters()
    finally:
        await store.redis.aclose()
    assert len(entries) == 1 and "'bank_confirmed' (sig-1)" in entries[0].detail and "completed" in entries[0].detail
    assert counters["refused_signals"] == 1
    shown = await cli(stack.settings, "show", ended.saga_id)
    assert "refused_signal" in shown.stdout


async def test_a_malformed_signal_is_answered_and_one_to_a_queue_not_allowed_is_not(stack: Stack) -> None:
    settings = stack.settings
    names = settings.names
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        mine = await channel.declare_queue(exclusive=True, auto_delete=True)
        # Someone else's queue: a participant's. It must never receive an answer it did not ask for.
        theirs = await channel.declare_queue(names.participant_queue("payment"), passive=True)
        answers: asyncio.Queue[SignalResult] = asyncio.Queue()

        async def on_answer(message: AbstractIncomingMessage) -> None:
            await answers.put(decode(SignalResult, message.body))

        await mine.consume(on_answer, no_ack=True)
        torn = json.dumps({"saga_id": "s-1", "name": "bank_confirmed", "reply_to": mine.name}).encode()
        await channel.default_exchange.publish(aio_pika.Message(torn), names.signals_queue)
        answer = await asyncio.wait_for(answers.get(), 10)
        assert (answer.outcome, answer.saga_id, answer.name) == ("refused", "s-1", "bank_confirmed")
        assert answer.error is not None and answer.error.code == "invalid_signal"
        assert "signal_id" in answer.error.message

        wrong = SignalSaga(saga_id="s-2", name="bank_confirmed", signal_id="x", reply_to=theirs.name)
        await channel.default_exchange.publish(aio_pika.Message(encode(wrong)), names.signals_queue)
        letters: dict[str, str] = {}
        for letter in await take_dead_letters(settings, 2):
            letters["torn" if letter.body == torn else "wrong"] = reason_of(letter)
        assert letters["torn"].startswith("invalid_signal: not a valid SignalSaga")
        assert letters["wrong"].startswith("reply_to_not_allowed: ")
        assert (await channel.declare_queue(theirs.name, passive=True)).declaration_result.message_count == 0
    finally:
        await connection.close()


async def test_the_client_refuses_what_it_can_tell_is_wrong_before_sending(stack: Stack) -> None:
    for saga_id, name, data in (("a b", "x", {}), ("s-1", "no.dots", {}), ("s-1", "x", {"when": object()})):
        with pytest.raises(SignalRefused) as refused:
            await stack.client.signal(saga_id, name, data, wait=True)
        assert refused.value.code == "invalid_signal"


async def test_the_web_api_sends_signals_with_the_token_only(stack: Stack) -> None:
    async with serving(stack.settings, SAGAS) as url, httpx.AsyncClient(base_url=url, timeout=20) as http:
        path = f"/api/sagas/s-{uuid.uuid4().hex[:6]}/signals/bank_confirmed"
        assert (await http.post(path, json={"data": {}})).status_code == 401
        answer = await http.post(path, json={"data": {"ref": 1}}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 404
        assert answer.json()["detail"]["code"] == "unknown_saga"
        ended = await stack.run("order", order())
        answer = await http.post(
            f"/api/sagas/{ended.saga_id}/signals/bank_confirmed",
            headers={"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": "web-1"},
        )
        assert answer.status_code == 409 and answer.json()["detail"]["code"] == "finished"
