"""The exception hierarchy of `model/`: one root, so callers catch the model side in one place.

```
ModelError                      every error the model side raises on purpose; the CLI prints
 |                              its message as one line and exits 1
 +-- DataError                  an input file or record of the wrong shape (a missing column,
 |                              an unknown event type, too few users to split); also a
 |                              ValueError. Fix the data or point at another file
 +-- ConfigError                arguments that cannot work (a k below 1, an unknown method or
 |                              policy name); also a ValueError. Nothing was trained or served
 +-- RegistryError              the model registry has no such name or version, or an artifact
 |                              is incomplete; the model in use keeps serving
 +-- BatcherClosed              a request reached a micro-batcher after close(); also a
 |                              RuntimeError. Happens only while a predictor is being replaced
 +-- BatchError                 a batch function returned a result count other than its
 |                              request count; also a RuntimeError. A predictor bug: every
 |                              request of that batch fails with it, the next batch runs
 +-- Overloaded                 the micro-batcher's queue stayed full past its block time; also
                                a RuntimeError. Backpressure: retry later or add capacity
```
"""

from __future__ import annotations

__all__ = [
    "BatchError",
    "BatcherClosed",
    "ConfigError",
    "DataError",
    "ModelError",
    "Overloaded",
    "RegistryError",
]


class ModelError(Exception):
    """Base of every error the model side raises on purpose."""


class DataError(ModelError, ValueError):
    """An input file or record that cannot be read as the method expects."""


class ConfigError(ModelError, ValueError):
    """Arguments or settings of a model, policy or trainer that cannot work."""


class RegistryError(ModelError):
    """No such model name or version in the registry, or an incomplete artifact."""


class BatcherClosed(ModelError, RuntimeError):
    """The batcher was closed; no new requests are accepted."""


class BatchError(ModelError, RuntimeError):
    """A batch function broke its contract: one result per request, in order."""


class Overloaded(ModelError, RuntimeError):
    """The request queue stayed full for longer than the caller was willing to block."""
