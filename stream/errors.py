"""The exception hierarchy: bad input (PoisonMessage) versus broken infrastructure (InfraError)."""

from __future__ import annotations


class LamstreamError(Exception):
    """Base of every error lamstream raises on purpose."""


class PoisonMessage(LamstreamError):
    """A record that can never be processed: it goes to the DLQ and the worker goes on.

    kind is a short machine-readable label (metric label, DLQ error_kind).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class InfraError(LamstreamError):
    """Broker, disk or network trouble: retried with backoff, then the worker crashes loudly."""


class BrokerError(InfraError):
    """The embedded broker could not be started or did not become ready."""


class ClientError(LamstreamError):
    """Misuse of the client SDK (e.g. an invalid event handed to EventProducer.send)."""
