"""How the SDK's clients are configured: Settings or a bootstrap string, and group timing."""

from __future__ import annotations

import os
from typing import Any

from stream.errors import ClientError
from stream.kafka.admin import cluster_id
from stream.kafka.broker import EMBEDDED_CLUSTER_ID
from stream.settings import Settings

# Kafka's own default (max.poll.interval.ms): an application may take 5 minutes between polls
# before the group evicts it and hands its records to another member.
KAFKA_MAX_POLL_INTERVAL_MS = 300_000
# Against the embedded broker (tansu) only: the demo and tests restart members often, and a
# short interval keeps each rebalance there within seconds.
EMBEDDED_MAX_POLL_INTERVAL_MS = 10_000
# Group settings that let a consumer join within seconds (tansu needs the short session; a real
# Kafka accepts them: 6 s is its default group.min.session.timeout.ms).
GROUP_TIMING: dict[str, Any] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}

# Variables a bare bootstrap string would silently ignore: the connection's security, and the
# prefix that names the topics.
_IGNORED_BY_BARE_BOOTSTRAP = (
    "LAMSTREAM_SECURITY_PROTOCOL", "LAMSTREAM_SASL_MECHANISM", "LAMSTREAM_SASL_USERNAME",
    "LAMSTREAM_SASL_PASSWORD", "LAMSTREAM_SSL_CAFILE", "LAMSTREAM_SSL_CERTFILE",
    "LAMSTREAM_SSL_KEYFILE", "LAMSTREAM_TOPIC_PREFIX")


def _set_in_environment() -> list[str]:
    env = {k.upper(): v.strip() for k, v in os.environ.items()}  # pydantic reads any case
    return [name for name in _IGNORED_BY_BARE_BOOTSTRAP if env.get(name)
            and not (name == "LAMSTREAM_SECURITY_PROTOCOL" and env[name].upper() == "PLAINTEXT")]


def as_settings(settings_or_bootstrap: Settings | str) -> Settings:
    """Settings as given, or defaults around a bootstrap string ("host:port[,host:port]").

    A bare string means plaintext and no topic prefix; ClientError when the environment sets
    security or a prefix it would ignore (use the client's from_env() then, or pass
    stream.settings.load_settings()).
    """
    if isinstance(settings_or_bootstrap, Settings):
        return settings_or_bootstrap
    if isinstance(settings_or_bootstrap, str) and settings_or_bootstrap.strip():
        ignored = _set_in_environment()
        if ignored:
            raise ClientError(
                f"a bare bootstrap string ({settings_or_bootstrap.strip()!r}) ignores "
                f"{', '.join(ignored)} set in the environment: build the client with "
                "from_env(), or pass stream.settings.load_settings()")
        return Settings.model_construct(bootstrap_servers=settings_or_bootstrap.strip())
    raise ClientError("expected Settings or a bootstrap string like 'localhost:9092', got "
                      f"{settings_or_bootstrap!r}")


def max_poll_interval_ms(settings: Settings, chosen: int | None) -> int:
    """The group's max poll interval: the caller's, else Kafka's 300 s, else (against the
    embedded broker only) 10 s."""
    if chosen is not None:
        if chosen < 1:
            raise ClientError(f"max_poll_interval_ms must be positive, got {chosen}")
        return chosen
    if cluster_id(settings) == EMBEDDED_CLUSTER_ID:
        return EMBEDDED_MAX_POLL_INTERVAL_MS
    return KAFKA_MAX_POLL_INTERVAL_MS


def group_config(settings: Settings, group_id: str, *, from_beginning: bool,
                 max_poll_interval: int | None) -> dict[str, Any]:
    """Consumer options of a group member that commits only what it has handed out."""
    return {"group_id": group_id, "enable_auto_commit": False,
            "auto_offset_reset": "earliest" if from_beginning else "latest",
            "max_poll_interval_ms": max_poll_interval_ms(settings, max_poll_interval),
            **GROUP_TIMING}
