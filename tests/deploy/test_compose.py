"""docker-compose.yml, Prometheus and Grafana files, checked offline against the Compose
specification schema (vendored) and against the app's own settings and metrics."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from stream.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
SCHEMA = REPO / "deploy" / "schemas" / "compose-spec.json"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = REPO / "deploy" / "grafana"
LAMSTREAM_COMMANDS = {"worker", "feedback", "trainer", "topics", "produce"}

# What the worker exports at /metrics (issue 6, item 5).
METRICS = {
    "lamstream_events_in_total", "lamstream_events_out_total", "lamstream_dlq_total",
    "lamstream_duplicates_total", "lamstream_late_events_total", "lamstream_consumer_lag",
    "lamstream_batch_size", "lamstream_inference_seconds", "lamstream_e2e_latency_seconds",
    "lamstream_model_version_info", "lamstream_table_keys", "lamstream_risk_alerts_total",
    "lamstream_models_refused_total",
}
# What the feedback join and the trainer export (stream.feedback.web, stream.trainer.web)
PROBE_METRICS = {
    "lamstream_feedback_records_in_total", "lamstream_feedback_records_out_total",
    "lamstream_feedback_rewards_joined_total", "lamstream_feedback_feedback_total",
    "lamstream_feedback_reward_rate", "lamstream_feedback_pending",
    "lamstream_feedback_risk_labels_total", "lamstream_feedback_consumer_lag",
    "lamstream_trainer_records_in_total", "lamstream_trainer_records_trained_total",
    "lamstream_trainer_gate_decisions_total", "lamstream_trainer_serving_version_info",
    "lamstream_trainer_consumer_lag", "lamstream_trainer_sequence_polls_total",
    "lamstream_trainer_sequence_events_skipped_total",
    "lamstream_trainer_sequence_prequential_hr20",
}
HISTOGRAMS = {"lamstream_batch_size", "lamstream_inference_seconds",
              "lamstream_e2e_latency_seconds"}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Compose variable substitution with the host variables unset (defaults apply)."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: m.group(2) or "", value).replace("$$", "$")
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return interpolate(raw)["services"]


def lamstream_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services.items() if str(s.get("image", "")).startswith("lamstream:")}


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def kafka_brokers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {n: env_of(s) for n, s in services.items()
            if str(s.get("image", "")).startswith("apache/kafka:")}


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    import os
    for key in list(os.environ):
        if key.startswith("LAMSTREAM_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


# ----------------------------------------------------------------------- schema


def test_vendored_schema_is_the_recorded_one() -> None:
    digest = hashlib.sha256(SCHEMA.read_bytes()).hexdigest()
    assert digest in (REPO / "deploy" / "schemas" / "README.md").read_text(), \
        "compose-spec.json changed: record its new source and sha256 in deploy/schemas/README.md"


def test_compose_file_matches_the_compose_specification(raw: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


# ------------------------------------------------------------------------ kafka


def test_three_broker_kraft_cluster_rf3_min_isr2(services: dict[str, dict[str, Any]]) -> None:
    brokers = kafka_brokers(services)
    assert len(brokers) == 3
    images = {services[n]["image"] for n in brokers}
    assert len(images) == 1 and not images.pop().endswith(":latest")
    ids = {env["KAFKA_NODE_ID"] for env in brokers.values()}
    assert ids == {"1", "2", "3"}
    for name, env in brokers.items():
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        voters = dict(v.split("@") for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        assert voters == {
            brokers[b]["KAFKA_NODE_ID"]: f"{services[b].get('hostname', b)}:9093"
            for b in brokers}, f"{name}: quorum voters do not name the three brokers"
        assert "CONTROLLER://:9093" in env["KAFKA_LISTENERS"]
        assert f"PLAINTEXT://{services[name].get('hostname', name)}:9092" in \
            env["KAFKA_ADVERTISED_LISTENERS"]
        # One cluster id for all three, in Kafka's format (base64url of 16 bytes).
        assert base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==").__len__() == 16
        assert int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == 3
        assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2
        assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 3
        assert int(env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]) == 2
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert services[name]["healthcheck"]["test"], "topic-init waits on broker health"
        assert any(v.endswith(":" + env["KAFKA_LOG_DIRS"]) for v in services[name]["volumes"])
    assert len({env["CLUSTER_ID"] for env in brokers.values()}) == 1


def test_topic_init_creates_topics_from_settings(
        services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    init = services["topic-init"]
    assert init["command"] == ["topics", "create"]
    assert init["restart"] == "no"
    brokers = kafka_brokers(services)
    assert init["depends_on"] == {b: {"condition": "service_healthy"} for b in brokers}
    settings = settings_from(env_of(init), monkeypatch)
    min_isr = int(next(iter(brokers.values()))["KAFKA_MIN_INSYNC_REPLICAS"])
    assert settings.replication_factor == len(brokers) == 3
    assert min_isr < settings.replication_factor, "min ISR must leave room for one broker down"
    for name in ("worker", "feedback", "trainer", "worker-gpu", "demo-producer"):
        assert services[name]["depends_on"]["topic-init"] == {
            "condition": "service_completed_successfully"}


# -------------------------------------------------------------------- lamstream


def test_lamstream_services_build_this_repo(services: dict[str, dict[str, Any]]) -> None:
    mine = lamstream_services(services)
    assert {"topic-init", "worker", "feedback", "trainer", "worker-gpu", "demo-producer"} \
        <= set(mine)
    for name, svc in mine.items():
        build = svc["build"]
        assert build["context"] == "."
        assert (REPO / build["dockerfile"]).is_file(), name
        assert svc["command"][0] in LAMSTREAM_COMMANDS, f"{name}: {svc['command']}"
        assert svc["stop_grace_period"] == "30s", f"{name}: grace period for SIGTERM shutdown"
        if svc["command"][0] not in ("worker", "feedback", "trainer"):
            # The others serve no /health; the image's HEALTHCHECK would fail there.
            assert svc["healthcheck"] == {"disable": True}, name


def test_every_service_env_is_valid_settings(
        services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    brokers = kafka_brokers(services)
    internal = {f"{services[b].get('hostname', b)}:9092" for b in brokers}
    for name, svc in lamstream_services(services).items():
        settings = settings_from(env_of(svc), monkeypatch)  # raises if any value is invalid
        assert set(settings.bootstrap.split(",")) == internal, name
        assert settings.web_host == "0.0.0.0", f"{name}: unreachable from other containers"
        assert settings.replication_factor <= len(brokers)
        assert str(settings.data_dir) == "/var/lib/lamstream"


def test_worker_scales_with_its_own_state(
        services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("worker", "worker-gpu"):
        svc = services[name]
        settings = settings_from(env_of(svc), monkeypatch)
        assert svc["command"] == ["worker"]
        assert "container_name" not in svc, f"{name}: a fixed name forbids --scale"
        for port in svc.get("ports", []):
            host = str(port).rsplit(":", 1)[0]
            assert "-" in host.rsplit(":", 1)[-1], f"{name}: fixed host port forbids --scale"
            assert str(port).endswith(f":{settings.web_port}")
        mounts = {v["target"]: v for v in svc["volumes"]}
        state = mounts[str(settings.data_dir)]
        # No source: an anonymous volume, i.e. a fresh one per replica.
        assert state["type"] == "volume" and "source" not in state, \
            f"{name}: replicas would share one RocksDB directory"
        models = mounts[f"{settings.data_dir}/models"]
        assert models["source"] == "models"
    trainer = {v.split(":")[1]: v.split(":")[0] for v in services["trainer"]["volumes"]}
    assert trainer["/var/lib/lamstream/models"] == "models", "trainer publishes elsewhere"


def test_feedback_join_scales_with_its_own_state(
        services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    svc = services["feedback"]
    assert svc["command"] == ["feedback"]
    assert "container_name" not in svc and "profiles" not in svc
    assert "ports" not in svc, "the feedback join serves no HTTP"
    settings = settings_from(env_of(svc), monkeypatch)
    (state,) = svc["volumes"]  # no models: the join never loads one
    # Anonymous: each replica owns the RocksDB join table of its partitions.
    assert state == {"type": "volume", "target": str(settings.data_dir)}
    assert settings.pseudonym_key is not None, "`lamstream feedback` refuses to start without"
    worker = settings_from(env_of(services["worker"]), monkeypatch)
    # Same topics, co-partitioned, and a group of its own next to the workers' one.
    assert (settings.app_id, settings.topic_prefix, settings.partitions) == (
        worker.app_id, worker.topic_prefix, worker.partitions)
    assert worker.decision_log, "the workers must publish `decisions` for the join"


# Importing the join imports kafka-python, whose import warns about importlib.resources.
@pytest.mark.filterwarnings("ignore:.* is deprecated. Use files\\(\\) instead:DeprecationWarning")
def test_feedback_join_serves_its_probes_beside_faust(
        services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """The app the feedback service runs has Faust's web server off; its /health and
    /metrics come from stream.probes on FEEDBACK_WEB_PORT, which its healthcheck calls."""
    from stream.feedback.app import create_feedback_app

    settings = settings_from(env_of(services["feedback"]), monkeypatch)
    app = create_feedback_app(settings.model_copy(update={"data_dir": tmp_path})).app
    assert app.conf.web_enabled is False
    assert app.conf.id == f"{settings.app_id}-feedback"
    # Its table state lives under DATA_DIR, i.e. on the replica's own volume.
    assert Path(app.conf.datadir).is_relative_to(tmp_path)


@pytest.mark.parametrize(("service", "port_var"), [("feedback", "LAMSTREAM_FEEDBACK_WEB_PORT"),
                                                   ("trainer", "LAMSTREAM_TRAINER_WEB_PORT")])
def test_feedback_and_trainer_have_healthchecks_on_their_probe_port(
        services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, service: str,
        port_var: str) -> None:
    settings = settings_from(env_of(services[service]), monkeypatch)
    port = getattr(settings, f"{service}_web_port")
    assert port > 0 and int(env_of(services[service])[port_var]) == port
    check = services[service]["healthcheck"]
    assert not check.get("disable")
    test = " ".join(check["test"])
    assert "/health" in test and port_var in test
    assert check["start_period"] and check["retries"] >= 3
    # the workers' dashboard reads this process's /health by its compose DNS name
    worker = settings_from(env_of(services["worker"]), monkeypatch)
    assert getattr(worker, f"{service}_url") == f"http://{service}:{port}"


def test_compose_kafka_brokers_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name in ("kafka-1", "kafka-2", "kafka-3"):
        assert "9092" in " ".join(services[name]["healthcheck"]["test"]), name


def test_gpu_profile_runs_the_cuda_worker(services: dict[str, dict[str, Any]]) -> None:
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["TORCH_VARIANT"] == "cu128"
    assert gpu["image"].endswith("-cu128")
    assert env_of(gpu)["LAMSTREAM_DEVICE"] == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    cpu = services["worker"]
    assert cpu["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert env_of(cpu)["LAMSTREAM_DEVICE"] == "cpu"
    assert "profiles" not in cpu
    # The GPU worker joins the same consumer group, so partitions are shared.
    assert env_of(gpu)["LAMSTREAM_APP_ID"] == env_of(cpu)["LAMSTREAM_APP_ID"]


def test_demo_producer_replays_a_mounted_file(services: dict[str, dict[str, Any]]) -> None:
    demo = services["demo-producer"]
    cmd = demo["command"]
    assert cmd[0] == "produce" and cmd[2] == "--rate" and int(cmd[3]) > 0
    mount = next(v for v in demo["volumes"] if cmd[1].startswith(v["target"] + "/"))
    assert mount["read_only"] is True
    # By default the file is the sample shipped in the repo (and in the package).
    source = REPO / mount["source"]
    assert source.resolve() == (REPO / "stream" / "sample").resolve()
    replayed = source / Path(cmd[1]).relative_to(mount["target"])
    assert replayed.is_file(), f"{replayed} is not in the repo"
    first = json.loads(replayed.read_text().splitlines()[0])
    assert {"event_id", "user_id", "type"} <= set(first), "not an events file"


# ------------------------------------------------------------ prometheus, grafana


def test_prometheus_discovers_every_worker_replica(services: dict[str, dict[str, Any]]) -> None:
    cfg = yaml.safe_load(PROMETHEUS.read_text())
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "lamstream-worker")
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]  # per-replica A records: scales with --scale
    workers = {n for n, s in lamstream_services(services).items() if s["command"] == ["worker"]}
    assert set(sd["names"]) == workers
    assert sd["type"] == "A"
    assert {int(env_of(services[w])["LAMSTREAM_WEB_PORT"]) for w in workers} == {sd["port"]}
    mounted = services["prometheus"]["volumes"]
    assert f"./{PROMETHEUS.relative_to(REPO)}:/etc/prometheus/prometheus.yml:ro" in mounted
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


@pytest.mark.parametrize(("job_name", "service", "port_var"), [
    ("lamstream-feedback", "feedback", "LAMSTREAM_FEEDBACK_WEB_PORT"),
    ("lamstream-trainer", "trainer", "LAMSTREAM_TRAINER_WEB_PORT")])
def test_prometheus_scrapes_the_feedback_join_and_the_trainer(
        services: dict[str, dict[str, Any]], job_name: str, service: str,
        port_var: str) -> None:
    cfg = yaml.safe_load(PROMETHEUS.read_text())
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == job_name)
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == [service] and sd["type"] == "A"
    assert int(env_of(services[service])[port_var]) == sd["port"]


def _mount_target(service: dict[str, Any], host_dir: Path) -> str:
    for vol in service["volumes"]:
        src, _, rest = vol.partition(":")
        if (REPO / src).resolve() == host_dir.resolve():
            return rest.split(":")[0]
    raise AssertionError(f"{host_dir} not mounted")


def test_grafana_is_provisioned_with_datasource_and_dashboard(
        services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    prov = _mount_target(grafana, GRAFANA / "provisioning")
    assert prov == "/etc/grafana/provisioning"
    (ds,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090" and "prometheus" in services
    (provider,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "lamstream.yml").read_text())["providers"]
    assert provider["options"]["path"] == _mount_target(grafana, GRAFANA / "dashboards")
    dash = json.loads((GRAFANA / "dashboards" / "lamstream.json").read_text())
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == ds["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == ds["uid"]


def _exprs(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_metric_names_are_the_ones_the_worker_exports() -> None:
    from stream.worker.metrics import Metrics

    exported = {}
    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        exported[name] = family.type
    assert set(exported) == METRICS, "stream/metrics.py and the dashboard contract differ"
    assert {n for n, t in exported.items() if t == "histogram"} == HISTOGRAMS


def _probe_families() -> list[Any]:
    """Every family the feedback join and the trainer export, from stand-in processes."""
    from types import SimpleNamespace

    from stream.feedback.app import JoinStats
    from stream.feedback.risk_labels import LabelStats
    from stream.feedback.web import feedback_families
    from stream.probes import LagProbe
    from stream.trainer.web import trainer_families

    class Model:
        def stats(self) -> dict[str, Any]:
            return {"seen": 1, "trained": 1, "serving": "v1", "polls": 1,
                    "last_candidate_hr": 0.2, "last_serving_hr": 0.1}
    stats = JoinStats()
    stats.add_feedback("greedy", True)
    fw = SimpleNamespace(join=SimpleNamespace(stats=stats),
                         risk=SimpleNamespace(stats=LabelStats()))
    ct = SimpleNamespace(trainer=Model(), risk=Model(), gates=[{"published": "v1"}],
                         risk_gates=[], sequence=Model(), sequence_gates=[])
    lag = LagProbe(Settings(), "g", ("t",))
    lag.lag = {"t": {0: 1}}
    return [*feedback_families(fw, lag), *trainer_families(ct, lag)]


def _exported_name(family: Any) -> str:
    return str(family.name) + ("_total" if family.type == "counter" else "")


def _label_names() -> dict[str, set[str]]:
    from stream.worker.metrics import Metrics

    metrics = Metrics()
    out = {}
    for attr in vars(metrics).values():
        if hasattr(attr, "_labelnames"):
            name = attr._name + ("_total" if attr._type == "counter" else "")
            out[name] = set(attr._labelnames)
    for family in _probe_families():
        out[_exported_name(family)] = {k for smp in family.samples for k in smp.labels}
    return out


def test_probe_metric_names_are_the_ones_the_processes_export() -> None:
    assert {_exported_name(f) for f in _probe_families()} == PROBE_METRICS


def test_dashboard_groups_by_labels_the_metrics_have() -> None:
    labels = _label_names()
    dash = json.loads((GRAFANA / "dashboards" / "lamstream.json").read_text())
    for expr in _exprs(dash):
        names = {re.sub(r"_(bucket|sum|count)$", "", n)
                 for n in re.findall(r"\blamstream_[a-z0-9_]+", expr)}
        allowed = {"le", "instance", "job", "service"}.union(*(labels[n] for n in names))
        for group in re.findall(r"by \(([^)]*)\)", expr):
            used = {g.strip() for g in group.split(",")}
            assert used <= allowed, f"{expr}: no label {used - allowed}"


def test_dashboard_panels_use_only_exported_metrics() -> None:
    dash = json.loads((GRAFANA / "dashboards" / "lamstream.json").read_text())
    used = set()
    for expr in _exprs(dash):
        for name in re.findall(r"\blamstream_[a-z0-9_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if base in PROBE_METRICS or name in PROBE_METRICS:
                used.add(name)
                continue
            assert base in METRICS, f"{name} is not exported by the worker"
            if name != base:
                assert base in HISTOGRAMS, f"{name}: {base} is not a histogram"
            used.add(base)
    everything = METRICS | PROBE_METRICS
    assert used == everything, f"metrics without a panel: {everything - used}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(("needle", "what"), [
    ("rate(lamstream_events_in_total", "throughput in"),
    ("rate(lamstream_events_out_total", "throughput out"),
    ("lamstream_consumer_lag", "consumer lag"),
    ("rate(lamstream_dlq_total", "DLQ rate"),
    ("lamstream_batch_size_bucket", "batch sizes"),
    ("histogram_quantile(0.5, sum by (le) (rate(lamstream_inference_seconds_bucket", "p50"),
    ("histogram_quantile(0.99, sum by (le) (rate(lamstream_inference_seconds_bucket", "p99"),
    ("histogram_quantile(0.5, sum by (le) (rate(lamstream_e2e_latency_seconds_bucket", "p50"),
    ("histogram_quantile(0.99, sum by (le) (rate(lamstream_e2e_latency_seconds_bucket", "p99"),
    ("lamstream_model_version_info", "model version"),
    ("rate(lamstream_risk_alerts_total", "alert rate"),
    ("lamstream_feedback_records_in_total", "feedback join records in"),
    ("lamstream_feedback_records_out_total", "feedback join records out"),
    ("lamstream_feedback_rewards_joined_total", "rewards joined"),
    ("lamstream_feedback_feedback_total", "reward rate per policy"),
    ("lamstream_feedback_pending", "pending decisions"),
    ("lamstream_feedback_consumer_lag", "feedback join lag"),
    ("lamstream_trainer_consumer_lag", "trainer lag"),
    ("lamstream_trainer_gate_decisions_total", "gate decisions"),
    ("lamstream_trainer_serving_version_info", "serving versions"),
    ("lamstream_models_refused_total", "refused models"),
])
def test_dashboard_has_the_issue_panels(needle: str, what: str) -> None:
    dash = json.loads((GRAFANA / "dashboards" / "lamstream.json").read_text())
    assert any(needle in e for e in _exprs(dash)), f"no panel for {what}"
