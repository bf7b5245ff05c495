"""The `lamstream` command line: one module per command group."""

__all__ = [
    "main",
    "export",
    "learn",
    "model",
    "policy",
]
