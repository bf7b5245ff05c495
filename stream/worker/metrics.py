"""Prometheus metrics of one worker, in a registry of its own (so tests can build many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class Metrics:
    """Every metric the worker exports at /metrics (names are part of the deploy contract)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events_in = Counter("lamstream_events_in", "Records consumed", ["topic"], registry=r)
        self.events_out = Counter("lamstream_events_out", "Records published", ["topic"],
                                  registry=r)
        self.dlq = Counter("lamstream_dlq", "Records sent to the DLQ", ["error_kind"],
                           registry=r)
        self.duplicates = Counter("lamstream_duplicates", "Duplicate event ids skipped",
                                  registry=r)
        self.late = Counter("lamstream_late_events", "Events later than allowed lateness",
                            registry=r)
        self.risk_alerts = Counter("lamstream_risk_alerts", "Risk alerts published", registry=r)
        self.consumer_lag = Gauge("lamstream_consumer_lag", "Consumer lag (records)",
                                  ["topic", "partition"], registry=r)
        self.batch_size = Histogram("lamstream_batch_size", "Events per processed batch",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.inference = Histogram("lamstream_inference_seconds", "predict_batch wall time",
                                   buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("lamstream_e2e_latency_seconds",
                             "Event receipt to decision publish", buckets=_LATENCY_BUCKETS,
                             registry=r)
        self.model_version = Gauge("lamstream_model_version_info", "Model version in service",
                                   ["model", "version"], registry=r)
        self.models_refused = Counter(
            "lamstream_models_refused", "Announced model versions refused (not loadable, or "
            "reading features the stream does not produce)", ["model"], registry=r)
        self.last_refusal: dict[str, str] | None = None  # shown at /health
        self.table_keys = Gauge("lamstream_table_keys", "Users in the local feature table",
                                registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def refuse(self, model: str, version: str, reason: str) -> None:
        """Count a refused announcement and keep the latest one for /health."""
        self.models_refused.labels(model=model).inc()
        self.last_refusal = {"model": model, "version": version, "reason": reason}

    def set_model(self, model: str, version: str) -> None:
        self.model_version.clear()
        self.model_version.labels(model=model, version=version).set(1)
