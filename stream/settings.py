"""One frozen settings object for lamstream, read from LAMSTREAM_* environment variables."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.config import JsonDict
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.types import EVENT_TYPES, EventType
from stream.errors import SettingsError

PolicyName = Literal["greedy", "epsilon_greedy", "softmax"]

# The sections of the settings reference (docs/settings.md), in order: name -> what it holds.
SECTIONS: dict[str, str] = {
    "broker": "Broker and security: how every process reaches Kafka.",
    "topics": "Topics: the names lamstream uses and how it creates them.",
    "worker": "Worker: state directory, batching, input limits and the interpreter.",
    "web": "Web: the worker's HTTP server (dashboard, /features, /health, /metrics).",
    "state": "State: the per-user features the worker keeps in its tables.",
    "model": "Model: what the worker serves, and which events it decides on.",
    "policy": "Policy: how the shown items are picked from the ranked pool, and logged.",
    "feedback": "Feedback: the reward join, the risk-label join, and pseudonyms.",
    "trainer": "Trainer: the continuous trainer's gates, replay buffers and pace.",
    "logging": "Logging: every process's log level and format.",
}


def _in(section: str) -> JsonDict:
    """A field's json_schema_extra: the section of SECTIONS it is documented under."""
    if section not in SECTIONS:
        raise KeyError(f"no settings section {section!r}")
    return {"section": section}


class Settings(BaseSettings):
    """Everything an operator can set. Built once in main() and passed down.

    Each field's environment variable is LAMSTREAM_ and its name in capitals; fields are
    grouped by the section of SECTIONS their json_schema_extra names (docs/settings.md).
    """

    model_config = SettingsConfigDict(env_prefix="LAMSTREAM_", frozen=True, extra="ignore")

    # --- broker and security -------------------------------------------------------------
    bootstrap_servers: str | None = Field(
        None, json_schema_extra=_in("broker"), description="Kafka bootstrap servers "
        "(host:port,...). Unset: the CLI starts the embedded tansu broker.")
    embedded_port: int = Field(9092, ge=1, le=65535, json_schema_extra=_in("broker"),
                               description="Port of the embedded broker.")
    app_id: str = Field("lamstream", min_length=1, json_schema_extra=_in("broker"),
                        description="Consumer group / Faust app id.")
    session_timeout_s: float = Field(
        10.0, ge=2, le=300, json_schema_extra=_in("broker"), description="Consumer group "
        "session timeout: a worker silent this long (killed, hung) is replaced and its "
        "partitions move. On the embedded broker a join also waits half of it.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", json_schema_extra=_in("broker"), description="How every client talks "
        "to the brokers: plaintext or TLS, with or without SASL.")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, json_schema_extra=_in("broker"), description="SASL mechanism; needs a SASL_* "
        "SECURITY_PROTOCOL, which needs it.")
    sasl_username: str | None = Field(None, json_schema_extra=_in("broker"),
                                      description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, json_schema_extra=_in("broker"),
                                            description="SASL password (a secret: never "
                                            "printed or logged).")
    ssl_cafile: Path | None = Field(
        None, json_schema_extra=_in("broker"), description="CA bundle (PEM) that signed the "
        "brokers' certificates (SSL, SASL_SSL). Unset: the system's CAs.")
    ssl_certfile: Path | None = Field(None, json_schema_extra=_in("broker"),
                                      description="Client certificate (PEM), for brokers "
                                      "that require mutual TLS.")
    ssl_keyfile: Path | None = Field(None, json_schema_extra=_in("broker"),
                                     description="Private key (PEM) of SSL_CERTFILE.")

    # --- topics ---------------------------------------------------------------------------
    topic_prefix: str = Field("", json_schema_extra=_in("topics"),
                              description="Prefix for every topic name (e.g. 'prod.').")
    partitions: int = Field(8, ge=1, le=1024, json_schema_extra=_in("topics"),
                            description="Partitions of topics lamstream creates.")
    replication_factor: int = Field(1, ge=1, le=16, json_schema_extra=_in("topics"),
                                    description="Replication of created topics.")

    # --- worker ---------------------------------------------------------------------------
    data_dir: Path = Field(Path(".lamstream"), json_schema_extra=_in("worker"),
                           description="Table state and model registry.")
    worker_processes: str = Field(
        "1", pattern=r"^(auto|[1-9][0-9]*)$", json_schema_extra=_in("worker"),
        description="Group members `lamstream worker` runs on this host, each its own "
        "process, state dir (DATA_DIR/p0, p1, ...) and web port (WEB_PORT + i), under one "
        "supervisor; `auto`: one per CPU core of the host or container (os.cpu_count()). "
        "1: the worker runs in the command's own process.")
    store: Literal["rocksdb", "memory"] = Field("rocksdb", json_schema_extra=_in("worker"),
                                                description="Table store.")
    stall_after_s: float = Field(
        60.0, ge=1.0, le=3600.0, json_schema_extra=_in("worker"), description="/health "
        "answers 503 `stalled` when the worker's partitions have lag and no batch was "
        "processed for this long (liveness probes then restart it).")
    rocksdb_memtable_mb: int = Field(
        4, ge=1, le=1024, json_schema_extra=_in("worker"), description="RocksDB write buffer "
        "per table partition (two are kept); bounds the state store's write memory.")
    rocksdb_cache_mb: int = Field(
        8, ge=1, le=4096, json_schema_extra=_in("worker"), description="RocksDB block cache "
        "per table partition.")
    batch_max: int = Field(1000, ge=1, le=100_000, json_schema_extra=_in("worker"),
                           description="Max events per batch.")
    batch_within_ms: int = Field(5, ge=1, le=10_000, json_schema_extra=_in("worker"),
                                 description="Max wait to fill a batch.")
    fetch_max_wait_ms: int = Field(
        20, ge=1, le=30_000, json_schema_extra=_in("worker"), description="Longest a "
        "consumer fetch waits on the broker when no data is there yet (Kafka answers as soon "
        "as data arrives; tansu holds a fetch this long, so it bounds latency there). Faust's "
        "own default is 1500.")
    max_event_bytes: int = Field(65536, ge=256, json_schema_extra=_in("worker"),
                                 description="Larger events go to the DLQ.")
    gil_switch_ms: float = Field(
        50.0, ge=0.1, le=1000, json_schema_extra=_in("worker"), description="The worker's "
        "interpreter switch interval: how long a thread may hold the GIL while another waits "
        "(Python's default is 5 ms).")

    # --- web ------------------------------------------------------------------------------
    web_host: str = Field("127.0.0.1", json_schema_extra=_in("web"),
                          description="Address the worker's HTTP server binds.")
    web_port: int = Field(6066, ge=1, le=65535, json_schema_extra=_in("web"),
                          description="Worker HTTP port.")
    web_advertised_url: str | None = Field(
        None, pattern=r"^https?://[^/\s]+$", json_schema_extra=_in("web"),
        description="How other workers reach this one's HTTP server (http://host:port), so "
        "any worker answers /features for any user. Unset: http://WEB_HOST:WEB_PORT, with "
        "this machine's name when WEB_HOST binds all interfaces.")
    api_token: SecretStr | None = Field(
        None, json_schema_extra=_in("web"),
        description="Token required by /features when set (Bearer or ?token=).")
    feedback_url: str | None = Field(
        "http://127.0.0.1:6067", pattern=r"^https?://[^/\s]+$", json_schema_extra=_in("web"),
        description="Where the worker's dashboard reads the feedback join's /health (its "
        "Learning panel; http://host:port). Empty: the panel shows no feedback join.")
    trainer_url: str | None = Field(
        "http://127.0.0.1:6068", pattern=r"^https?://[^/\s]+$", json_schema_extra=_in("web"),
        description="Where the worker's dashboard reads the trainer's /health (its Learning "
        "panel; http://host:port). Empty: the panel shows no trainer.")

    # --- state ----------------------------------------------------------------------------
    windows_s: Annotated[tuple[int, ...], NoDecode] = Field(
        (60, 3600, 86400), json_schema_extra=_in("state"),
        description="Event-time windows in seconds (comma separated).")
    window_buckets: int = Field(12, ge=1, le=240, json_schema_extra=_in("state"),
                                description="Tiles per window.")
    allowed_lateness_s: int = Field(60, ge=0, json_schema_extra=_in("state"),
                                    description="Event-time lateness before an event stops "
                                    "counting in windows.")
    session_gap_s: int = Field(1800, ge=1, json_schema_extra=_in("state"),
                               description="Inactivity gap that starts a session.")
    user_ttl_s: int = Field(7 * 86400, ge=1, json_schema_extra=_in("state"),
                            description="Idle users expire after this long (processing "
                            "time).")
    sequence_length: int = Field(50, ge=1, le=1000, json_schema_extra=_in("state"),
                                 description="Recent events kept per user.")
    dedupe_ids: int = Field(1000, ge=1, le=100_000, json_schema_extra=_in("state"),
                            description="Recent event ids kept per user for duplicate "
                            "detection.")
    item_catalog_size: int = Field(200_000, ge=1, json_schema_extra=_in("state"),
                                   description="Items whose category the worker remembers "
                                   "(learned from events, oldest dropped first): logged with "
                                   "each decision for the reranker.")

    # --- model ----------------------------------------------------------------------------
    model_name: str = Field("auto", json_schema_extra=_in("model"),
                            description="Recommender to serve: auto (latest trained, else "
                            "baseline) or baseline.")
    predictor: str | None = Field(
        None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$", json_schema_extra=_in("model"),
        description="Serve your own model instead: package.module:factory, a callable that "
        "returns a model.predictor.Predictor (docs/models.md, `lamstream model check`). "
        "Announcements are ignored unless it sets accepts_announcements = True.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", json_schema_extra=_in("model"),
                                                   description="Torch device.")
    recommend_on: Annotated[tuple[EventType, ...], NoDecode] = Field(
        ("view", "click"), json_schema_extra=_in("model"),
        description="Event types that trigger a recommendation.")
    top_k: int = Field(10, ge=1, le=500, json_schema_extra=_in("model"),
                       description="Items per recommendation.")
    risk_threshold: float = Field(0.8, ge=0.0, le=1.0, json_schema_extra=_in("model"),
                                  description="Risk score that raises an alert.")

    # --- policy ---------------------------------------------------------------------------
    policy: PolicyName = Field(
        "epsilon_greedy", json_schema_extra=_in("policy"), description="How the shown items "
        "are picked from the ranked pool: greedy (top k), epsilon_greedy (decaying epsilon) "
        "or softmax (Boltzmann).")
    policy_pool: int = Field(30, ge=1, le=1000, json_schema_extra=_in("policy"),
                             description="Ranked candidates the policy chooses the top_k "
                             "shown items from.")
    policy_epsilon_start: float = Field(0.3, ge=0.0, le=1.0, json_schema_extra=_in("policy"),
                                        description="epsilon_greedy: epsilon at the first "
                                        "decision.")
    policy_epsilon_floor: float = Field(0.05, ge=0.0, le=1.0, json_schema_extra=_in("policy"),
                                        description="epsilon_greedy: epsilon never decays "
                                        "below this.")
    policy_epsilon_decay: float = Field(10_000.0, gt=0, json_schema_extra=_in("policy"),
                                        description="epsilon_greedy: decisions until epsilon "
                                        "has halved.")
    policy_temperature: float = Field(1.0, gt=0, json_schema_extra=_in("policy"),
                                      description="softmax: temperature, in the ranker's "
                                      "score units.")
    policy_seed: int = Field(0, json_schema_extra=_in("policy"),
                             description="Seed of the policy's randomness (each decision "
                             "draws from hash(seed, event id): reproducible).")
    policy_shadow: PolicyName | None = Field(
        None, json_schema_extra=_in("policy"), description="A candidate policy computed on "
        "the same pool and logged in the decision log (never shown), for off-policy "
        "evaluation.")
    decision_log: bool = Field(True, json_schema_extra=_in("policy"),
                               description="Publish each recommendation's point-in-time "
                               "features, sequence and candidate pool to the decisions topic "
                               "(what the feedback join needs).")

    # --- feedback -------------------------------------------------------------------------
    feedback_window_s: int = Field(1800, ge=1, json_schema_extra=_in("feedback"),
                                   description="Attribution window: event time after a "
                                   "recommendation in which an engagement counts.")
    feedback_rewards: Annotated[dict[str, float], NoDecode] = Field(
        {"click": 1.0, "add_to_cart": 2.0, "purchase": 5.0}, json_schema_extra=_in("feedback"),
        description="Reward per engagement type (type=weight,...); the highest within the "
        "window counts once.")
    feedback_web_port: int = Field(6067, ge=0, le=65535, json_schema_extra=_in("feedback"),
                                   description="Port of the feedback join's /health and "
                                   "/metrics (on WEB_HOST); 0: not served.")
    feedback_max_pending: int = Field(200, ge=1, le=100_000, json_schema_extra=_in("feedback"),
                                      description="Pending recommendations kept per user; "
                                      "beyond it the oldest closes early with the reward it "
                                      "has.")
    label_window_s: int = Field(7 * 86400, ge=1, json_schema_extra=_in("feedback"),
                                description="Risk-label join: scored events are kept this "
                                "long (event time) for labels to find, and a label naming "
                                "only the user covers their events this far back from its "
                                "ts.")
    label_max_snapshots: int = Field(100, ge=1, le=10_000, json_schema_extra=_in("feedback"),
                                     description="Risk-label join: scored events kept per "
                                     "user; beyond it the oldest without an alert go first.")
    pseudonym_key: SecretStr | None = Field(
        None, json_schema_extra=_in("feedback"),
        description="HMAC key for pseudonymous user ids in feedback.")

    # --- trainer --------------------------------------------------------------------------
    trainer_gate_every: int = Field(1000, ge=1, json_schema_extra=_in("trainer"),
                                    description="Feedback records between two gate checks "
                                    "(publish if the candidate wins).")
    trainer_window: int = Field(3000, ge=10, json_schema_extra=_in("trainer"),
                                description="Held-out recent feedback records (scored before "
                                "trained on) the gate compares on.")
    trainer_min_window: int = Field(1500, ge=1, json_schema_extra=_in("trainer"),
                                    description="No gate decision on fewer held-out records.")
    trainer_margin: float = Field(0.02, ge=0.0, json_schema_extra=_in("trainer"),
                                  description="The candidate's value must exceed the serving "
                                  "model's by this fraction.")
    trainer_confidence: float = Field(0.9, ge=0.0, le=1.0, json_schema_extra=_in("trainer"),
                                      description="Paired bootstrap P(candidate better) "
                                      "needed to publish.")
    trainer_replay: int = Field(20_000, ge=0, json_schema_extra=_in("trainer"),
                                description="Replay buffer size (feedback records, newest "
                                "kept).")
    trainer_lr: float = Field(0.05, gt=0.0, json_schema_extra=_in("trainer"),
                              description="Adagrad learning rate.")
    trainer_threads: int = Field(1, ge=1, le=256, json_schema_extra=_in("trainer"),
                                 description="Torch CPU threads (1 leaves the other cores to "
                                 "workers and joins on a small host; more for a dedicated "
                                 "one).")
    trainer_web_port: int = Field(6068, ge=0, le=65535, json_schema_extra=_in("trainer"),
                                  description="Port of the trainer's /health and /metrics (on "
                                  "WEB_HOST); 0: not served.")
    trainer_checkpoint_s: float = Field(10.0, gt=0.0, json_schema_extra=_in("trainer"),
                                        description="Seconds between checkpoints (state dir "
                                        "DATA_DIR/trainer), offsets committed after each.")
    trainer_risk_gate_every: int = Field(500, ge=1, json_schema_extra=_in("trainer"),
                                         description="Risk-feedback records between two risk "
                                         "gate checks.")
    trainer_risk_window: int = Field(3000, ge=10, json_schema_extra=_in("trainer"),
                                     description="Held-out recent risk-feedback records the "
                                     "risk gate compares on.")
    trainer_risk_min_positives: int = Field(30, ge=1, json_schema_extra=_in("trainer"),
                                            description="No risk gate decision with fewer "
                                            "frauds in the window.")
    trainer_risk_min_negatives: int = Field(300, ge=1, json_schema_extra=_in("trainer"),
                                            description="No risk gate decision with fewer "
                                            "legitimate events in the window.")
    trainer_risk_margin: float = Field(0.01, ge=0.0, le=1.0, json_schema_extra=_in("trainer"),
                                       description="The risk candidate's ROC-AUC must exceed "
                                       "the serving model's by this much (absolute).")
    trainer_risk_replay: int = Field(10_000, ge=0, json_schema_extra=_in("trainer"),
                                     description="Risk replay buffer (newest labelled "
                                     "records).")
    trainer_risk_lr: float = Field(1e-3, gt=0.0, json_schema_extra=_in("trainer"),
                                   description="Adam learning rate of the risk fine-tuning.")
    trainer_sequence: bool = Field(True, json_schema_extra=_in("trainer"),
                                   description="Fine-tune the served hybrid recommender from "
                                   "the events topic (consumer group <app_id>-trainer-events) "
                                   "when the registry's latest recommender serves a hybrid; "
                                   "false: that loop does not run.")
    trainer_sequence_every: int = Field(2000, ge=1, json_schema_extra=_in("trainer"),
                                        description="Events per fine-tuning poll: each is "
                                        "scored (prequential) before it is trained on, then "
                                        "the gate is checked.")
    trainer_sequence_window: int = Field(10, ge=1, json_schema_extra=_in("trainer"),
                                         description="Polls the hybrid's gate compares on "
                                         "(HR@20 of candidate and serving on the same cases).")
    trainer_sequence_min_cases: int = Field(1000, ge=1, json_schema_extra=_in("trainer"),
                                            description="No hybrid gate decision on fewer "
                                            "next-item cases in the window.")
    trainer_sequence_margin: float = Field(0.0, ge=-1.0, json_schema_extra=_in("trainer"),
                                           description="The candidate's HR@20 must exceed the "
                                           "serving hybrid's by this fraction (0: any gain; "
                                           "negative: publish up to that much worse, -1 every "
                                           "window, for demos and tests).")

    # --- logging --------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", json_schema_extra=_in("logging"), description="Log level of every process.")
    log_format: Literal["text", "json"] = Field(
        "text", json_schema_extra=_in("logging"), description="text: one readable line per "
        "record; json: one JSON object per line (ts, level, logger, msg), for log shippers.")

    @field_validator("feedback_url", "trainer_url", mode="before")
    @classmethod
    def _empty_url_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("windows_s", mode="before")
    @classmethod
    def _split_windows(cls, v: object) -> object:
        if isinstance(v, str):
            try:
                return tuple(int(x) for x in v.split(",") if x.strip())
            except ValueError as exc:
                raise ValueError(f"expected comma separated seconds, got {v!r}") from exc
        return v

    @field_validator("windows_s")
    @classmethod
    def _check_windows(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(w <= 0 for w in v):
            raise ValueError("windows must be positive seconds")
        if len(set(v)) != len(v):
            raise ValueError(f"windows {v} have duplicates")
        return v

    @field_validator("recommend_on", mode="before")
    @classmethod
    def _split_types(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(x.strip() for x in v.split(",") if x.strip())
        return v

    @field_validator("feedback_rewards", mode="before")
    @classmethod
    def _split_rewards(cls, v: object) -> object:
        if isinstance(v, str):
            try:
                pairs = [x.split("=", 1) for x in v.split(",") if x.strip()]
                return {k.strip(): float(w) for k, w in pairs}
            except ValueError as exc:
                raise ValueError(f"expected type=weight,..., got {v!r}") from exc
        return v

    @field_validator("feedback_rewards")
    @classmethod
    def _check_rewards(cls, v: dict[str, float]) -> dict[str, float]:
        bad = set(v) - set(EVENT_TYPES)
        if bad or not v or any(w <= 0 for w in v.values()):
            raise ValueError("rewards need event types and positive weights, e.g. "
                             "click=1,add_to_cart=2,purchase=5")
        return v

    @model_validator(mode="after")
    def _check(self) -> Settings:
        # cross-field checks have no field location: name the variables in the message
        if self.sasl_mechanism and not self.security_protocol.startswith("SASL"):
            raise ValueError("LAMSTREAM_SASL_MECHANISM needs LAMSTREAM_SECURITY_PROTOCOL "
                             "SASL_PLAINTEXT or SASL_SSL")
        if self.policy_epsilon_floor > self.policy_epsilon_start:
            raise ValueError("LAMSTREAM_POLICY_EPSILON_FLOOR must not exceed "
                             "LAMSTREAM_POLICY_EPSILON_START")
        if self.security_protocol.startswith("SASL"):
            missing = [f"LAMSTREAM_{name.upper()}" for name in
                       ("sasl_mechanism", "sasl_username", "sasl_password")
                       if not getattr(self, name)]  # an empty SecretStr is falsy too
            if missing:
                raise ValueError(f"LAMSTREAM_SECURITY_PROTOCOL {self.security_protocol} needs "
                                 + ", ".join(missing))
        return self

    @property
    def embedded(self) -> bool:
        return not self.bootstrap_servers

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers or f"127.0.0.1:{self.embedded_port}"

    @property
    def web_binds_all(self) -> bool:
        """WEB_HOST is a wildcard: the worker listens on every interface."""
        return self.web_host in ("0.0.0.0", "::", "")

    def shared(self) -> dict[str, object]:
        """What every process of one deployment must agree on (the worker's /health shows
        it, `lamstream doctor` compares), and what the worker serves."""
        return {"app_id": self.app_id, "topic_prefix": self.topic_prefix,
                "partitions": self.partitions, "model_name": self.model_name,
                "predictor": self.predictor}

    def advertised_url(self) -> str:
        """The worker's URL as its peers use it (Faust's canonical URL)."""
        if self.web_advertised_url is not None:
            return self.web_advertised_url
        host = socket.getfqdn() if self.web_binds_all else self.web_host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.web_port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of SSL / SASL_SSL (the CA file, and the client certificate when
        set); None for the plaintext protocols."""
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        ctx = ssl.create_default_context(
            cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        if self.ssl_certfile:
            ctx.load_cert_chain(str(self.ssl_certfile),
                                str(self.ssl_keyfile) if self.ssl_keyfile else None)
        return ctx

    def _sasl_config(self) -> dict[str, object]:
        """The SASL options, named alike by kafka-python and aiokafka (empty without SASL)."""
        if not self.sasl_mechanism:
            return {}
        return {"sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": (self.sasl_password.get_secret_value()
                                        if self.sasl_password else None)}

    def aiokafka_config(self) -> dict[str, object]:
        """Connection/security options for aiokafka clients (the benchmarks' own clients)."""
        cfg: dict[str, object] = {"bootstrap_servers": self.bootstrap,
                                  "security_protocol": self.security_protocol,
                                  **self._sasl_config()}
        ctx = self.ssl_context()
        if ctx is not None:
            cfg["ssl_context"] = ctx
        return cfg

    def kafka_python_config(self) -> dict[str, object]:
        """Connection/security options for kafka-python clients."""
        cfg: dict[str, object] = {"bootstrap_servers": self.bootstrap.split(","),
                                  "security_protocol": self.security_protocol,
                                  **self._sasl_config()}
        if self.ssl_cafile:
            cfg["ssl_cafile"] = str(self.ssl_cafile)
        if self.ssl_certfile:
            cfg["ssl_certfile"] = str(self.ssl_certfile)
        if self.ssl_keyfile:
            cfg["ssl_keyfile"] = str(self.ssl_keyfile)
        return cfg


def window_label(seconds: int) -> str:
    """60 -> '1m', 3600 -> '1h', 86400 -> '24h', 90 -> '90s'."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; invalid settings raise SettingsError with one clear line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            msg = " ".join(err["msg"].split())  # one line, whatever the value held
            # loc[0] is the field (loc[1] may be a list index); model checks have no loc
            parts.append(f"LAMSTREAM_{str(err['loc'][0]).upper()}: {msg}" if err["loc"] else msg)
        raise SettingsError("invalid settings: " + "; ".join(parts)) from None
