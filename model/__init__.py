"""lamstream's torch side: behaviour models, batching, training and registry (no Kafka here)."""

__all__ = [
    "batching",
    "bench",
    "datasets",
    "device",
    "encoding",
    "errors",
    "nets",
    "policy",
    "predictor",
    "recommenders",
    "registry",
    "risk",
    "serving",
    "stats",
    "testing",
    "train",
    "types",
    "vocab",
]
