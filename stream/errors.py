"""The exception hierarchy of `stream/`: bad input, broken infrastructure, misuse, bad settings.

```
LamstreamError                  every error lamstream raises on purpose; the CLI prints its
 |                              message as one line and exits 1
 +-- PoisonMessage              a record that can never be processed: it goes to the DLQ with
 |                              its original bytes and the worker goes on
 +-- InfraError                 broker, disk or network trouble: retried with backoff, then the
 |    |                         worker crashes loudly and its supervisor restarts it
 |    +-- BrokerError           the embedded broker could not start or did not become ready
 +-- FieldError                 a field value no wire record may hold (also a ValueError, as
 |                              pydantic validators must raise): pydantic reports it in a
 |                              ValidationError, which decoding turns into a PoisonMessage
 +-- StateError                 stored table state this version cannot read (another format,
 |                              or not a state at all; also a ValueError)
 +-- FaustVersionError          the installed faust-streaming or aiokafka is not the version
 |                              stream/kafka/faust_patches.py was audited against; raised when
 |                              that module is imported, before any work
 +-- ClientError                misuse of the client SDK (an invalid event handed to send())
 +-- SettingsError              settings that cannot work (also a ValueError, as pydantic
 |                              expects of validators); refused at start, before any work
 +-- UsageError                 arguments that cannot work for a command or a tool (also a
                                ValueError): a wrong option value, an input file of the
                                wrong shape; nothing was started
```
The model side has its own root, `model.errors.ModelError`; the CLI catches both roots.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ClientError",
    "FaustVersionError",
    "FieldError",
    "InfraError",
    "LamstreamError",
    "PoisonMessage",
    "SettingsError",
    "StateError",
    "UsageError",
]


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


class FieldError(LamstreamError, ValueError):
    """A field value no wire record may hold; raised in schema validators (pydantic wants a
    ValueError) and reported in a ValidationError."""


class StateError(LamstreamError, ValueError):
    """Stored table state this version cannot read: another format version, or not a state."""


class FaustVersionError(LamstreamError):
    """The installed faust-streaming (or aiokafka) is not the version whose internals
    stream/kafka/faust_patches.py was audited against; the message says what to audit."""


class ClientError(LamstreamError):
    """Misuse of the client SDK (e.g. an invalid event handed to EventProducer.send)."""


class SettingsError(LamstreamError, ValueError):
    """Settings that cannot work; the message is one line meant for a person."""


class UsageError(LamstreamError, ValueError):
    """Arguments that cannot work for a command or tool; the message says which and why."""
