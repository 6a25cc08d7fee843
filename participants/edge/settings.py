"""Settings from flags or the environment, read alike by the orchestrator, the workers and the client.

A setting that the edge needs (a URL, a limit, a queue argument) goes here,
so that every kind of process takes it the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from statemachines.names import DEFAULT_NAMESPACE, QUEUE_TYPES, Names, name_problem

MiB = 1024 * 1024
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Settings:
    amqp_url: str = DEFAULT_AMQP_URL
    redis_url: str = DEFAULT_REDIS_URL
    namespace: str = DEFAULT_NAMESPACE
    # Larger messages are dead-lettered unread.
    max_message_bytes: int = MiB
    # How long completed and compensated sagas stay readable.
    retention_seconds: int = 7 * 24 * 3600
    # A transition counts as committed (its commands are published, its message acked) only once
    # this many replicas have it (Redis WAIT), waiting at most redis_wait_ms each time; 0: at once.
    redis_replicas: int = 0
    redis_wait_ms: int = 1000
    # How long a starting process waits for RabbitMQ and Redis before it gives up (exit 3).
    startup_wait_seconds: int = 60
    # quorum (replicated) or classic (one node's disk): see the README's "Queue types".
    queue_type: str = "quorum"

    @property
    def names(self) -> Names:
        return Names(self.namespace, self.queue_type)

    @classmethod
    def from_env(
        cls,
        amqp_url: str | None = None,
        redis_url: str | None = None,
        namespace: str | None = None,
        queue_type: str | None = None,
    ) -> Settings:
        """Flags win over `SAGA_AMQP_URL`, `SAGA_REDIS_URL`, `SAGA_NAMESPACE`, `SAGA_QUEUE_TYPE`, then defaults.

        `SAGA_MAX_MESSAGE_BYTES` and `SAGA_RETENTION_SECONDS` set the two limits;
        `SAGA_REDIS_REPLICAS` and `SAGA_REDIS_WAIT_MS` how a commit waits for replicas;
        `SAGA_STARTUP_WAIT_SECONDS` how long a starting process waits for the services.
        """
        namespace = namespace or os.environ.get("SAGA_NAMESPACE") or DEFAULT_NAMESPACE
        # It prefixes every queue and key: bounded, like every name that becomes one.
        problem = name_problem(namespace, "the namespace")
        if problem is not None:
            raise BadSetting(f"{problem} (--namespace or SAGA_NAMESPACE)")
        queue_type = queue_type or os.environ.get("SAGA_QUEUE_TYPE") or "quorum"
        if queue_type not in QUEUE_TYPES:
            raise BadSetting(f"--queue-type or SAGA_QUEUE_TYPE must be quorum or classic, got {queue_type[:64]!r}")
        return cls(
            amqp_url=_urls(
                amqp_url or os.environ.get("SAGA_AMQP_URL") or DEFAULT_AMQP_URL, "--amqp-url or SAGA_AMQP_URL"
            ),
            redis_url=_url(
                redis_url or os.environ.get("SAGA_REDIS_URL") or DEFAULT_REDIS_URL, "--redis-url or SAGA_REDIS_URL"
            ),
            namespace=namespace,
            max_message_bytes=_positive("SAGA_MAX_MESSAGE_BYTES", MiB),
            retention_seconds=_positive("SAGA_RETENTION_SECONDS", 7 * 24 * 3600),
            redis_replicas=_positive("SAGA_REDIS_REPLICAS", 0, least=0),
            redis_wait_ms=_positive("SAGA_REDIS_WAIT_MS", 1000),
            startup_wait_seconds=_positive("SAGA_STARTUP_WAIT_SECONDS", 60, least=0),
            queue_type=queue_type,
        )


class BadSetting(ValueError):
    """An environment variable that does not hold what it should."""


def _positive(name: str, default: int, least: int = 1) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = least - 1
    if value < least:
        what = "a positive whole number" if least == 1 else f"a whole number of at least {least}"
        raise BadSetting(f"{name} must be {what}, got {raw!r}")
    return value


def _url(url: str, where: str) -> str:
    """The URL, or one sentence on what is wrong with it (the parsers would raise a bare ValueError later)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it is the check: a port that is not a number raises
    except ValueError:
        # Not the URL itself: it may hold a password.
        raise BadSetting(f"the URL in {where} has a port that is not a number from 0 to 65535") from None
    if not parts.scheme:
        raise BadSetting(f"the URL in {where} has no scheme (amqp://, redis://...)")
    return url


def split_urls(value: str) -> list[str]:
    """One URL per broker node, from `amqp://h1/,amqp://h2/` or `amqp://u:p@h1:5672,h2:5673/vhost`.

    A comma-separated item without a scheme is one more host of the URL
    before it, sharing its user, password, virtual host and query.
    """
    urls: list[str] = []
    base = 0  # where the URL that the extra hosts extend sits
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        if "://" in item or not urls:
            base = len(urls)
            urls.append(item)
            continue
        # An extra host: "h2:5673" or "h2:5673/vhost" (the path, if any, sits on the last host).
        host, slash, rest = item.partition("/")
        first = urlsplit(urls[-1])
        userinfo = first.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{host}" if userinfo else host
        path = f"/{rest}" if slash else first.path
        urls.append(urlunsplit(first._replace(netloc=netloc, path=path)))
        if slash:
            # The virtual host written after the last host belongs to every host before it.
            urls[base:] = [urlunsplit(urlsplit(u)._replace(path=path)) for u in urls[base:]]
    return urls


def _urls(value: str, where: str) -> str:
    """Several broker URLs, each checked as `_url` checks one; the value is kept as given."""
    urls = split_urls(value)
    if not urls:
        raise BadSetting(f"{where} is empty: give one or more URLs such as amqp://guest:guest@127.0.0.1:5672/")
    for n, url in enumerate(urls, 1):
        _url(url, where if len(urls) == 1 else f"{where} (number {n})")
    return value
