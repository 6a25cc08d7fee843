"""The web view in a real headless Chromium: a live list, a saga's page with its path, a refused action."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from participants.edge.settings import Settings
from statemachines.sagas import SAGAS
from tests.integration.browser import browser_page
from tests.integration.conftest import Stack, example_workers, running
from tests.integration.test_end_to_end import order
from tests.integration.webserver import serving


@pytest.fixture
async def viewed(settings: Settings) -> AsyncIterator[tuple[Stack, str, Any]]:
    async with (
        running(settings, workers=example_workers()) as stack,
        serving(settings, SAGAS) as url,
        browser_page() as page,
    ):
        yield stack, url, page


async def test_the_list_shows_a_saga_started_while_it_is_open_without_a_reload(
    viewed: tuple[Stack, str, Any],
) -> None:
    stack, url, page = viewed
    await page.goto(url)
    await page.wait_for_selector("#live:text('live')")
    await page.evaluate("window.notReloaded = true")
    outcome = await stack.run("order", order())
    row = page.locator(f"tr[data-saga='{outcome.saga_id}']")
    await row.wait_for()
    await page.wait_for_selector(f"tr[data-saga='{outcome.saga_id}'][data-status='completed']")
    assert "completed" in await row.inner_text()
    assert await page.evaluate("window.notReloaded") is True


async def test_a_sagas_page_shows_its_history_and_its_path_and_refuses_an_action_without_the_token(
    viewed: tuple[Stack, str, Any],
) -> None:
    stack, url, page = viewed
    outcome = await stack.run("order", order(fail_at=["charge_payment"]))
    assert outcome.status == "compensated"
    await page.goto(f"{url}/sagas/{outcome.saga_id}")
    await page.wait_for_selector("#graph svg")
    assert "compensated" in await page.inner_text("#fact-status")
    events = await page.locator("#history tr").evaluate_all("rows => rows.map(r => r.dataset.event)")
    assert events[:2] == ["start", "succeeded"] and "failed" in events
    path = ["new", "reserve_inventory", "charge_payment", "compensating_reserve_inventory", "compensated"]
    fills = await page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#graph svg g.node')].map(g => [
            g.querySelector('title').textContent,
            [...g.querySelectorAll('path, polygon, rect, ellipse')].map(s => s.getAttribute('fill')).join(' '),
        ]))"""
    )
    for state in path:
        assert "#fde68a" in fills[state], state
    for state in ("create_shipment", "completed", "stuck"):
        assert "#fde68a" not in fills[state], state
    await page.click("#compensate")
    await page.wait_for_selector("#message.refused")
    assert "refused: a bearer token is needed" in await page.inner_text("#message")
