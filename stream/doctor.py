"""`lamstream doctor`'s checks: broker, topics, groups, lag, registry, workers; each with a fix."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from model.registry import ModelRegistry
from stream.devtools.procs import get_json_status
from stream.errors import InfraError
from stream.kafka.admin import admin_client, consumer_lag
from stream.settings import Settings
from stream.topics import consumer_groups, topics_for

__all__ = ["Finding", "Report", "default_worker_url", "diagnose", "package_versions"]

Status = Literal["ok", "warning", "problem"]
PACKAGES = ("lamstream", "faust-streaming", "torch", "kafka-python", "aiokafka")
REBALANCING = ("PreparingRebalance", "CompletingRebalance")
# each user's outputs go to the partition their event came from (stream.kafka.publish), and
# the feedback join reads events and decisions side by side: the counts must be equal
CO_PARTITIONED = ("recommendations", "risk_alerts", "decisions")


@dataclass(frozen=True, slots=True)
class Finding:
    """One verdict: which check, ok / warning / problem, what was seen, the command that fixes
    it (problems and warnings)."""

    check: str
    status: Status
    message: str
    fix: str | None = None


@dataclass
class Report:
    """Everything doctor saw. `ok` is False when a finding is a problem (the exit code)."""

    bootstrap: str
    versions: dict[str, str | None]
    findings: list[Finding] = field(default_factory=list)
    broker: dict[str, Any] = field(default_factory=dict)
    topics: list[dict[str, Any]] = field(default_factory=list)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    lag: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)
    registry: dict[str, Any] = field(default_factory=dict)
    workers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.status != "problem" for f in self.findings)

    def add(self, check: str, status: Status, message: str, fix: str | None = None) -> None:
        self.findings.append(Finding(check, status, message, fix))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def package_versions() -> dict[str, str | None]:
    """The installed version of each package lamstream's behaviour depends on (None: absent)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def default_worker_url(settings: Settings) -> str:
    """The worker this shell's settings describe (what `lamstream features` asks too)."""
    host = "127.0.0.1" if settings.web_binds_all else settings.web_host
    return f"http://{host}:{settings.web_port}"


def diagnose(settings: Settings, worker_urls: Sequence[str] = (),
             timeout: float = 10.0) -> Report:
    """Run every check against the cluster and processes `settings` describe; `timeout`
    bounds the wait for the broker and for each worker."""
    report = Report(bootstrap=settings.bootstrap, versions=package_versions())
    try:
        # kafka-python's own wait for a cluster that does not answer is 30 s
        with admin_client(settings, bootstrap_timeout_ms=int(timeout * 1000)) as admin:
            check_broker(admin, settings, report)
            check_topics(admin, settings, report)
            check_groups(admin, settings, report)
        check_lag(settings, report)
    except (InfraError, KafkaError) as exc:
        report.add("broker", "problem", f"{exc}", fix=_broker_fix(settings))
    check_registry(settings, report)
    check_workers(settings, list(worker_urls) or [default_worker_url(settings)], report,
                  timeout)
    return report


def _broker_fix(settings: Settings) -> str:
    if settings.embedded:
        return ("start one: `lamstream broker` (embedded), or point LAMSTREAM_BOOTSTRAP_SERVERS "
                "at your cluster")
    return ("check LAMSTREAM_BOOTSTRAP_SERVERS, LAMSTREAM_SECURITY_PROTOCOL and the SSL/SASL "
            "settings (docs/operations.md)")


def check_broker(admin: KafkaAdminClient, settings: Settings, report: Report) -> None:
    """The cluster answers: its id, brokers and the protocol version kafka-python agreed."""
    cluster = admin.describe_cluster()
    brokers = cluster.get("brokers", [])
    version = None
    if brokers:  # inferred by kafka-python from the broker's ApiVersions answer
        data = admin.get_broker_version_data(brokers[0]["broker_id"])
        version = ".".join(map(str, data.broker_version or ())) or None
    apis = {getattr(k, "name", str(k)): list(v) for k, v in admin.api_versions().items()}
    report.broker = {"cluster_id": cluster.get("cluster_id"), "brokers": len(brokers),
                     "version": version, "api_versions": apis}
    report.versions["broker"] = f"Kafka {version or 'unknown'} (as its ApiVersions tell)"
    report.add("broker", "ok", f"{settings.bootstrap} ({settings.security_protocol}): cluster "
               f"{cluster.get('cluster_id')}, {len(brokers)} broker(s), Kafka "
               f"{version or 'unknown'} API level, {len(apis)} APIs")


def _describe(admin: KafkaAdminClient, names: list[str]) -> dict[str, dict[str, Any]]:
    """{topic: {partitions, replication}} for the topics that exist."""
    out: dict[str, dict[str, Any]] = {}
    for t in admin.describe_topics(names):
        if t.get("error_code", 0) == 0 and t.get("partitions"):
            parts = t["partitions"]
            out[t["name"]] = {"partitions": len(parts),
                              "replication": min(len(p["replica_nodes"]) for p in parts)}
    return out


def check_topics(admin: KafkaAdminClient, settings: Settings, report: Report) -> None:
    """Every lamstream topic present, with enough partitions and replicas, co-partitioned."""
    specs = topics_for(settings).all()
    seen = _describe(admin, [s.name for s in specs])
    report.topics = [{"name": s.name, "present": s.name in seen, "want_partitions": s.partitions,
                      **seen.get(s.name, {})} for s in specs]
    missing = [s.name for s in specs if s.name not in seen]
    if missing:
        report.add("topics", "problem", f"missing: {', '.join(missing)}",
                   fix="lamstream topics create (with this shell's LAMSTREAM_TOPIC_PREFIX, "
                   "_PARTITIONS and _REPLICATION_FACTOR)")
    few = [f"{s.name} ({seen[s.name]['partitions']} < {s.partitions})" for s in specs
           if s.name in seen and seen[s.name]["partitions"] < s.partitions]
    if few:
        report.add("topics", "warning", "fewer partitions than LAMSTREAM_PARTITIONS: "
                   + ", ".join(few), fix="set LAMSTREAM_PARTITIONS to what the topics have, "
                   "or add partitions on purpose (kafka-topics --alter; it re-shards users)")
    thin = [n for n, t in seen.items() if t["replication"] < settings.replication_factor]
    if thin:
        report.add("topics", "warning", f"replication below {settings.replication_factor}: "
                   + ", ".join(sorted(thin)), fix="kafka-reassign-partitions (Kafka's tool)")
    if not missing and not few:
        report.add("topics", "ok", f"{len(specs)} topics present, partitions "
                   + ", ".join(sorted({str(t['partitions']) for t in seen.values()})))
    _check_copartitioning(settings, seen, report)


def _check_copartitioning(settings: Settings, seen: dict[str, dict[str, Any]],
                          report: Report) -> None:
    t = topics_for(settings)
    if t.events.name not in seen:
        return
    n = seen[t.events.name]["partitions"]
    outputs = [getattr(t, o).name for o in CO_PARTITIONED if getattr(t, o).name in seen]
    odd = {o: seen[o]["partitions"] for o in outputs if seen[o]["partitions"] != n}
    if not odd:
        report.add("co-partitioning", "ok", f"{t.events.name} and its outputs have {n} "
                   "partitions each")
        return
    most = max([n, *odd.values()])
    grow = [name for name in (t.events.name, *outputs) if seen[name]["partitions"] < most]
    report.add(
        "co-partitioning", "problem",
        f"{t.events.name} has {n} partitions but " + ", ".join(
            f"{o} has {c}" for o, c in odd.items()) + ": each user's outputs go to the "
        "partition of their events, and the feedback join reads them side by side",
        fix="; ".join(f"kafka-topics --bootstrap-server {settings.bootstrap} --alter --topic "
                      f"{name} --partitions {most}" for name in grow)
        + " (stop the workers first: added partitions move users and their state)")


def check_groups(admin: KafkaAdminClient, settings: Settings, report: Report) -> None:
    """Each process's consumer group: its state and members."""
    groups = consumer_groups(settings)
    ids = [gid for gid, _ in groups.values()]
    described = admin.describe_groups(ids)
    for role, (gid, _) in groups.items():
        d = described.get(gid, {})
        members = [m.get("client_id") or m.get("member_id") for m in d.get("members", [])]
        state = d.get("group_state") or "Unknown"
        report.groups[role] = {"group_id": gid, "state": state, "members": members}
        if state in REBALANCING:
            report.add("groups", "warning", f"{gid} ({role}) is rebalancing: members are "
                       "joining or leaving", fix=f"if it stays so, read the {role}s' logs: a "
                       "member that cannot finish joining is restarted or stuck")
        elif not members and role == "worker":
            report.add("groups", "problem", f"{gid}: no worker is a member, so nobody reads "
                       "the events", fix="start one: lamstream worker")
        elif members:
            report.add("groups", "ok", f"{gid} ({role}): {state}, {len(members)} member(s)")
        else:
            report.add("groups", "warning", f"{gid}: no {role} is running",
                       fix=f"lamstream {role}")


def check_lag(settings: Settings, report: Report) -> None:
    """Per group, topic and partition: end offset minus committed (what a restart reads)."""
    present = {t["name"] for t in report.topics if t["present"]}
    for role, (gid, topics) in consumer_groups(settings).items():
        if role != "worker" and not report.groups.get(role, {}).get("members"):
            continue  # a process that is not running has no lag worth reading
        lags = {t: consumer_lag(settings, gid, t) for t in topics if t in present}
        report.lag[gid] = lags
        total = sum(sum(p.values()) for p in lags.values())
        report.add("lag", "ok", f"{gid}: {total} record(s) behind on "
                   + ", ".join(f"{t} {sum(p.values())}" for t, p in lags.items()))


def check_registry(settings: Settings, report: Report) -> None:
    """What the model registry in DATA_DIR holds: versions and latest, per model."""
    reg = ModelRegistry(settings.data_dir)
    try:
        held = reg.list()
    except OSError as exc:
        report.add("registry", "warning", f"cannot read {reg.root}: {exc}",
                   fix="check LAMSTREAM_DATA_DIR and its permissions")
        return
    report.registry = {"root": str(reg.root), "models": {
        name: {"versions": versions, "latest": reg.latest(name)}
        for name, versions in held.items()}}
    if not any(held.values()):
        report.add("registry", "ok", f"{reg.root} is empty: workers serve the online baseline "
                   "(`lamstream train recommender --data FILE` publishes a model)")
        return
    report.add("registry", "ok", f"{reg.root}: " + "; ".join(
        f"{name} {', '.join(v)} (latest {reg.latest(name)})" for name, v in held.items() if v))


def check_workers(settings: Settings, urls: list[str], report: Report,
                  timeout: float) -> None:
    """Each worker's /health: up, serving which version, with the same shared settings."""
    mine = settings.shared()
    for url in urls:
        try:
            status, health = get_json_status(f"{url.rstrip('/')}/health", timeout)
        except (OSError, ValueError) as exc:
            report.workers.append({"url": url, "up": False, "error": str(exc)})
            report.add("workers", "problem", f"no worker answers at {url} ({exc})",
                       fix="start it: lamstream worker (elsewhere: lamstream doctor "
                       "--worker http://HOST:PORT)")
            continue
        health = health or {}
        report.workers.append({"url": url, "up": True, "http_status": status, **health})
        _check_worker(url, status, health, mine, report)
    _check_versions(settings, report)


def _check_worker(url: str, status: int, health: dict[str, Any], mine: dict[str, object],
                  report: Report) -> None:
    theirs = health.get("settings") or {}
    differ = [k for k in ("app_id", "topic_prefix", "partitions") if k in theirs
              and theirs[k] != mine[k]]
    if differ:
        report.add("settings", "problem", f"the worker at {url} runs with " + ", ".join(
            f"LAMSTREAM_{k.upper()}={theirs[k]!r}" for k in differ) + ", this shell with "
            + ", ".join(f"{mine[k]!r}" for k in differ),
            fix="give every process the same settings (one .env / ConfigMap), then rerun")
    if status != 200 or health.get("status") != "ok":
        report.add("workers", "warning", f"the worker at {url} is {health.get('status')} "
                   f"(ingest {health.get('ingest')}, rebalancing {health.get('rebalancing')})",
                   fix="wait for it; if it stays so, read its log")
        return
    report.add("workers", "ok", f"{url}: serving {health.get('model')} "
               f"{health.get('model_version')}, {len(health.get('assignment', []))} "
               "topic partitions assigned")


def _check_versions(settings: Settings, report: Report) -> None:
    """Workers that serve different versions, or not the registry's latest recommender."""
    up = [w for w in report.workers if w.get("up") and w.get("model_version")]
    served = {str(w["model_version"]).split("+")[0] for w in up}
    if len(served) > 1:
        report.add("workers", "warning", "workers serve different versions: " + ", ".join(
            f"{w['url']} {w['model_version']}" for w in up),
            fix="lamstream model announce recommender (each worker loads the latest)")
    latest = report.registry.get("models", {}).get("recommender", {}).get("latest")
    custom = settings.predictor or settings.model_name == "baseline"
    behind = [w["url"] for w in up if latest and not custom
              and str(w["model_version"]).split("+")[0] != latest]
    if behind:
        report.add("workers", "warning", f"{', '.join(behind)} not serving the registry's "
                   f"latest recommender {latest}", fix="lamstream model announce recommender")
