"""The `lamstream` command line: one module per command group, assembled in main."""

__all__ = [
    "check",
    "data",
    "doctor",
    "export",
    "main",
    "model",
    "policy",
    "refdocs",
    "service",
    "tools",
]
