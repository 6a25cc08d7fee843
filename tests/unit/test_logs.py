"""`--log-format json`: one object per line, naming the saga where there is one."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from participants.edge import logs


def _line(record: logging.LogRecord) -> dict[str, object]:
    text = logs.JsonFormatter().format(record)
    assert "\n" not in text
    parsed: dict[str, object] = json.loads(text)
    return parsed


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("saga.engine", logging.WARNING, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    return record


async def test_each_task_logs_the_saga_it_works_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "structured", True)

    async def work(saga_id: str, step: str) -> dict[str, object]:
        logs.about(saga_id, "order", step, 2)
        await asyncio.sleep(0)  # the other task runs meanwhile
        return _line(_record("publish failed\nagain"))

    first, second = await asyncio.gather(work("s-1", "charge_payment"), work("s-2", "create_shipment"))
    assert first["saga_id"] == "s-1" and first["step"] == "charge_payment"
    assert second["saga_id"] == "s-2" and second["step"] == "create_shipment"
    assert first["attempt"] == 2 and first["saga_type"] == "order"
    assert first["message"] == "publish failed\nagain" and first["level"] == "WARNING"


def test_a_line_without_a_saga_has_no_saga_fields_and_extra_wins() -> None:
    line = asyncio.run(_no_saga())
    assert set(line) == {"time", "level", "logger", "message"}
    assert _line(_record("x", saga_id="given"))["saga_id"] == "given"


async def _no_saga() -> dict[str, object]:
    return _line(_record("orchestrator up"))
