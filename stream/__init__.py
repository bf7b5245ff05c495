"""lamstream's streaming side: everything that touches Kafka or Faust."""

__all__ = [
    "cli",
    "client",
    "devtools",
    "errors",
    "feedback",
    "kafka",
    "schemas",
    "settings",
    "state",
    "topics",
    "trainer",
    "worker",
]
