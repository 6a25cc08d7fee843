"""Settings from flags or the environment: `Settings.from_env()`, as the README's client example imports it.

They are defined in `participants.edge.settings`, since the workers read the same ones.
"""

from participants.edge.settings import DEFAULT_AMQP_URL, DEFAULT_REDIS_URL, BadSetting, Settings

__all__ = ["DEFAULT_AMQP_URL", "DEFAULT_REDIS_URL", "BadSetting", "Settings"]
