"""Bulk operator actions: `saga retry|compensate --status ... --type ... --since ... --limit N [--dry-run]`.

Many sagas get stuck at once when a participant's compensation fails for a
while; once it is fixed, one command resumes them all, and only those
selected. Through the real `saga` CLI in a subprocess, over the real services.
"""

from __future__ import annotations

import time
import uuid

from participants.edge.settings import Settings
from participants.worker import Context, Failure
from statemachines.dsl import Retry, Saga, Step
from tests.integration.conftest import eventually, running
from tests.integration.scripted import Scripted, cli, participants_of

MODULE = "tests.integration.test_bulk"
QUICK = Retry(2, backoff=0.05, jitter=0)


def _saga(name: str) -> Saga:
    return Saga(
        name,
        steps=[
            Step(
                "reserve",
                participant="blk_desk",
                command="reserve",
                compensation="unreserve",
                timeout=10.0,
                compensation_retry=QUICK,
            ),
            Step("book", participant="blk_desk", command="book", timeout=10.0, retry=Retry(1)),
        ],
    )


repair, other = _saga("blk_repair"), _saga("blk_other")
running_one = Saga(
    "blk_waiting",
    steps=[Step("reserve", participant="blk_nobody", command="reserve", compensation="unreserve", timeout=60.0)],
)
SAGAS = [repair, other, running_one]


class Desk(Scripted):
    """Reserves; cannot book; cannot undo a reservation while its ledger is read-only."""

    def __init__(self) -> None:
        super().__init__("blk_desk", prefetch=64)
        self.ledger_down = True
        self.act("reserve", {"reservation": "r-1"})
        self.act("book", failure=lambda ctx: Failure("no_room", "fully booked"))
        self.act("unreserve", failure=self._unreserve)

    def _unreserve(self, ctx: Context) -> Failure | None:
        return Failure("ledger_down", "the ledger is read-only") if self.ledger_down else None


def ids(out: str) -> list[str]:
    return [line for line in out.splitlines() if line]


async def test_bulk_retry_resumes_only_the_selected_stuck_sagas(settings: Settings, cleanup: set[str]) -> None:
    cleanup.update(participants_of(SAGAS))
    desk = Desk()
    async with running(settings, SAGAS, [desk]) as stack:
        store = stack.orchestrators[0].engine.store  # type: ignore[union-attr]
        tag = uuid.uuid4().hex[:6]
        repairs = [f"blk-{tag}-{n:03}" for n in range(150)]
        others = [f"blk-{tag}-o{n}" for n in range(5)]
        for saga_id in repairs:
            await stack.client.start("blk_repair", {}, saga_id)
        for saga_id in others:
            await stack.client.start("blk_other", {}, saga_id)

        async def statuses(wanted: list[str]) -> dict[str, str]:
            found = {}
            for saga_id in wanted:
                inst = await store.load(saga_id)
                found[saga_id] = inst.status if inst else "missing"
            return found

        async def all_stuck() -> bool:
            return set((await statuses(repairs + others)).values()) == {"stuck"}

        await eventually(all_stuck, timeout=60)
        # One that is running: a retry of stuck sagas leaves it alone.
        await stack.client.start("blk_waiting", {}, f"blk-{tag}-w")

        # An old one, stuck two hours ago: outside --since 1h.
        old = repairs[0]
        await store.redis.hset(store.names.saga_key(old), "updated_at", str(time.time() - 7200))

        counted = await cli(settings, "retry", "--status", "stuck", "--type", "blk_repair", "--dry-run")
        assert counted.returncode == 0, counted.stderr
        assert f"{len(repairs)} saga(s) would be resumed" in counted.stderr
        assert sorted(ids(counted.stdout)) == sorted(repairs)
        assert ids(counted.stdout)[0] == old, "the oldest first"
        limited = await cli(settings, "retry", "--status", "stuck", "--type", "blk_repair", "--limit", "3", "--dry-run")
        assert len(ids(limited.stdout)) == 3 and "3 saga(s) would be resumed" in limited.stderr
        recent = await cli(settings, "compensate", "--status", "stuck", "--since", "1h", "--dry-run")
        assert sorted(ids(recent.stdout)) == sorted(repairs[1:] + others)
        assert set((await statuses(repairs + others)).values()) == {"stuck"}, "a dry run changes nothing"

        # The ledger works again: one command resumes every recent stuck repair, and only those.
        desk.ledger_down = False
        retried = await cli(
            settings, "retry", "--status", "stuck", "--type", "blk_repair", "--since", "1h", "--sagas", MODULE
        )
        assert retried.returncode == 0, retried.stdout + retried.stderr
        assert f"{len(repairs) - 1} saga(s) resumed, 0 had nothing to do, 0 could not be" in retried.stderr
        assert "Traceback" not in retried.stderr

        async def repaired() -> bool:
            return set((await statuses(repairs[1:])).values()) == {"compensated"}

        await eventually(repaired, timeout=60)
        left = await statuses([old, *others])
        assert set(left.values()) == {"stuck"}, left
        assert (await store.load(f"blk-{tag}-w")).status == "running"  # type: ignore[union-attr]

        async def forgotten() -> bool:  # confirmed outboxes are cleared a moment after their confirms
            return not [s for s in repairs if await store.redis.exists(store.names.outbox_key(s))]

        assert await eventually(forgotten, timeout=5), "the CLI forgot what it published"

        # The rest by type; the single-id form still works.
        single = await cli(settings, "retry", old, "--sagas", MODULE)
        assert single.returncode == 0 and f"{old}: resumed" in single.stdout, single.stdout + single.stderr
        rest = await cli(settings, "retry", "--status", "stuck", "--type", "blk_other", "--sagas", MODULE)
        assert rest.returncode == 0 and "5 saga(s) resumed" in rest.stderr, rest.stderr

        async def everything() -> bool:
            return set((await statuses(repairs + others)).values()) == {"compensated"}

        await eventually(everything, timeout=30)
        assert desk.calls["unreserve"].count(f"{old}:reserve") == 3, "two failed attempts, then the retried one"


async def test_a_bulk_action_refuses_a_confused_selection_with_a_sentence(settings: Settings) -> None:
    for args, said in (
        (["retry"], "give one saga ID or --status"),
        (["retry", "some-id", "--status", "stuck"], "give one saga ID or --status"),
        (["compensate", "some-id", "--dry-run"], "use them with --status"),
        (["retry", "--status", "stuck", "--since", "yesterday"], "--since takes an age"),
        (["retry", "--status", "stuck", "--limit", "0"], "--limit must be at least 1"),
    ):
        result = await cli(settings, *args)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.startswith("saga: ") and said in result.stderr and "Traceback" not in result.stderr
    wrong = await cli(settings, "retry", "--status", "running")
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr, "retry resumes stuck sagas only"
