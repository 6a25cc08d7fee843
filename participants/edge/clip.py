"""What a log line may quote of a value someone sent: its start, never all of it (a 10 KB id must not fill a log)."""

from __future__ import annotations

LIMIT = 200


def clip(value: object, limit: int = LIMIT) -> str:
    """`value` (a string, else its repr) cut to `limit` characters, saying how much was left out."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"
