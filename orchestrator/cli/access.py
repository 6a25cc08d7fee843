"""`saga access`: the least-privilege RabbitMQ users of a namespace, as rabbitmqctl commands or a definitions file."""

from __future__ import annotations

import argparse
import secrets
import sys
from urllib.parse import unquote, urlsplit

from orchestrator.cli.common import EXIT_OK, command, sagas_flag
from orchestrator.config import Settings
from orchestrator.registry import Registry
from participants.edge.settings import split_urls


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(
        sub,
        "access",
        "print the rabbitmqctl commands (or a definitions file) for a user per participant with least privilege",
        print_access,
    )
    sagas_flag(p)
    p.add_argument(
        "--definitions",
        action="store_true",
        help="print a RabbitMQ definitions file (users without passwords, permissions, the namespace's queues)",
    )
    p.add_argument(
        "--generate-passwords",
        action="store_true",
        help="put a random password on each add_user line (default: none, rabbitmqctl reads it from standard input)",
    )


def vhost_of(amqp_url: str) -> str:
    """The virtual host an AMQP URL names, as aiormq reads it ("/" when it names none)."""
    path = urlsplit(split_urls(amqp_url)[0]).path
    return unquote(path.strip("/")) or "/"


async def print_access(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator import access

    names = settings.names
    participants = access.participants_of(Registry.from_module(args.sagas))
    vhost = vhost_of(settings.amqp_url)
    if args.definitions:
        sys.stdout.write(access.definitions_json(names, participants, vhost))
        return EXIT_OK
    grants = access.grants(names, participants)
    passwords = {g.user: secrets.token_urlsafe(24) for g in grants} if args.generate_passwords else None
    sys.stdout.write(access.rabbitmqctl(grants, vhost, passwords))
    return EXIT_OK
