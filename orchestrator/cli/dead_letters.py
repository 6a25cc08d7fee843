"""`saga dead-letters list|show|replay|purge`: what could not be processed, why, and what to do with it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from orchestrator.cli.common import EXIT_FAILED, EXIT_OK, UsageError, command
from orchestrator.config import Settings

LIMIT = 1000


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "dead-letters",
        help="list, show, replay or purge the messages that could not be processed",
        description="The namespace's dead letters (<ns>.dead-letters): each with its reason, the queue it came "
        "from, how often it was delivered, its saga where known, and its body.",
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = command(actions, "list", "list dead letters, oldest first", list_letters)
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    _limit(p)

    p = command(actions, "show", "show dead letters with their whole body", show_letters)
    p.add_argument("message_ids", nargs="+", metavar="MESSAGE_ID")
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    _limit(p)

    p = command(actions, "replay", "put dead letters back on the queue they came from (after a fix)", replay)
    p.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID")
    p.add_argument("--all", action="store_true", help="replay every dead letter")
    _limit(p)

    p = command(actions, "purge", "delete dead letters for good (asks first, unless --yes)", purge)
    p.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID", help="only these (default: all)")
    p.add_argument("--yes", action="store_true", help="do not ask")
    _limit(p)


def _limit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=LIMIT, help=f"look at this many at most (default: {LIMIT})")


def _check(args: argparse.Namespace) -> None:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")


async def list_letters(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.dead_letters import held

    _check(args)
    async with held(settings, args.limit) as letters:
        if args.json:
            for letter in letters.letters:
                print(json.dumps(letter.doc()))
            return EXIT_OK
        row = "{:<40} {:<30} {:>10}  {:<38} {}"
        print(row.format("MESSAGE_ID", "QUEUE", "DELIVERIES", "SAGA", "REASON"))
        for letter in letters.letters:
            reason = letter.reason if len(letter.reason) <= 120 else letter.reason[:117] + "..."
            print(row.format(letter.message_id or "-", letter.queue, letter.deliveries, letter.saga_id or "-", reason))
        shown = len(letters.letters)
        more = f" (of {letters.total}: --limit to see more)" if letters.total > shown else ""
        print(f"{shown} dead letter(s) in {settings.names.dead_queue}{more}", file=sys.stderr)
    return EXIT_OK


async def show_letters(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.dead_letters import held

    _check(args)
    async with held(settings, args.limit) as letters:
        found = letters.matching(args.message_ids)
        for letter in found:
            if args.json:
                print(json.dumps(letter.doc()))
                continue
            doc = letter.doc()
            print(f"message   {letter.message_id or '-'}  ({letter.kind or 'unknown kind'})")
            print(f"queue     {letter.queue}")
            print(f"reason    {letter.reason}")
            print(f"delivered {letter.deliveries} time(s)")
            print(f"saga      {letter.saga_id or '-'}")
            body = json.dumps(doc["body"], indent=2) if "body" in doc else doc["body_text"]
            print(f"body      {body}")
            print()
    if not found:
        raise UsageError(f"no dead letter {', '.join(args.message_ids)} in {settings.names.dead_queue}")
    return EXIT_OK


async def replay(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.dead_letters import held

    _check(args)
    if bool(args.message_ids) == args.all:
        raise UsageError("name the dead letters to replay (MESSAGE_ID ...), or pass --all")
    failed = 0
    async with held(settings, args.limit) as letters:
        found = letters.matching(args.message_ids)
        if not found:
            raise UsageError(f"no dead letter {', '.join(args.message_ids)} in {settings.names.dead_queue}")
        for letter in found:
            why = await letters.replay(letter)
            if why is None:
                print(f"{letter.message_id or '-'}: replayed to {letter.queue}")
            else:
                failed += 1
                print(f"{letter.message_id or '-'}: not replayed: {why}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


async def purge(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.dead_letters import held

    _check(args)
    async with held(settings, args.limit) as letters:
        found = letters.matching(args.message_ids)
        if not found:
            print(f"no dead letters to purge in {settings.names.dead_queue}", file=sys.stderr)
            return EXIT_OK if not args.message_ids else EXIT_FAILED
        if not args.yes:
            print(f"purge {len(found)} dead letter(s) from {settings.names.dead_queue} for good? [y/N] ", end="")
            sys.stdout.flush()
            answer = (await asyncio.to_thread(sys.stdin.readline)).strip().lower()
            if answer not in ("y", "yes"):
                print("nothing purged (--yes purges without asking)", file=sys.stderr)
                return EXIT_FAILED
        for letter in found:
            await letters.purge(letter)
        print(f"purged {len(found)} dead letter(s)")
    return EXIT_OK
