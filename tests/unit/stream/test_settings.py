"""Settings: LAMSTREAM_* environment, defaults, and one clear line for every invalid value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from stream.errors import LamstreamError, SettingsError
from stream.settings import Settings, load_settings, window_label


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: the developer's or CI's LAMSTREAM_* must not leak in."""
    for name in os.environ:
        if name.upper().startswith("LAMSTREAM_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = load_settings()
    assert s.bootstrap_servers is None and s.embedded and s.bootstrap == "127.0.0.1:9092"
    assert (s.partitions, s.web_port, s.store, s.topic_prefix) == (8, 6066, "rocksdb", "")
    assert s.windows_s == (60, 3600, 86400) and s.allowed_lateness_s == 60
    assert s.user_ttl_s == 7 * 86400 and s.session_gap_s == 1800
    assert s.session_timeout_s == 10  # failover within 10 s; on tansu joins wait half
    assert s.recommend_on == ("view", "click") and s.data_dir == Path(".lamstream")
    assert s.security_protocol == "PLAINTEXT" and s.max_event_bytes == 65_536


def test_environment_is_read_with_the_lamstream_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "LAMSTREAM_BOOTSTRAP_SERVERS": "k1:9092,k2:9092", "LAMSTREAM_TOPIC_PREFIX": "prod.",
        "LAMSTREAM_PARTITIONS": "12", "LAMSTREAM_DATA_DIR": "/var/lib/lamstream",
        "LAMSTREAM_STORE": "memory", "LAMSTREAM_WEB_PORT": "8080",
        "LAMSTREAM_USER_TTL_S": "3600", "LAMSTREAM_RISK_THRESHOLD": "0.5",
        "PARTITIONS": "99",  # not ours: ignored
    }.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert s.bootstrap_servers == "k1:9092,k2:9092" and not s.embedded
    assert s.kafka_python_config()["bootstrap_servers"] == ["k1:9092", "k2:9092"]
    assert (s.topic_prefix, s.partitions, s.store, s.web_port) == ("prod.", 12, "memory", 8080)
    assert s.data_dir == Path("/var/lib/lamstream") and s.user_ttl_s == 3600
    assert s.risk_threshold == 0.5


def test_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMSTREAM_WINDOWS_S", " 300, 60 ,86400,")
    monkeypatch.setenv("LAMSTREAM_RECOMMEND_ON", "view, add_to_cart ,")
    s = load_settings()
    assert s.windows_s == (300, 60, 86400)
    assert s.recommend_on == ("view", "add_to_cart")


def test_keyword_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMSTREAM_PARTITIONS", "3")
    monkeypatch.setenv("LAMSTREAM_WINDOWS_S", "bogus")  # overridden, so never parsed as an error
    s = load_settings(partitions=5, windows_s=(60, 120))
    assert s.partitions == 5 and s.windows_s == (60, 120)


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValidationError):
        s.partitions = 2  # type: ignore[misc]


@pytest.mark.parametrize(("env", "value"), [
    ("LAMSTREAM_PARTITIONS", "abc"),
    ("LAMSTREAM_PARTITIONS", "0"),
    ("LAMSTREAM_WEB_PORT", "70000"),
    ("LAMSTREAM_STORE", "redis"),
    ("LAMSTREAM_LOG_LEVEL", "chatty"),
    ("LAMSTREAM_RISK_THRESHOLD", "1.5"),
    ("LAMSTREAM_RISK_THRESHOLD", "nan"),
    ("LAMSTREAM_WINDOW_BUCKETS", "0"),
    ("LAMSTREAM_ALLOWED_LATENESS_S", "-1"),
    ("LAMSTREAM_USER_TTL_S", "0"),
    ("LAMSTREAM_MAX_EVENT_BYTES", "10"),
    ("LAMSTREAM_WINDOWS_S", "60,abc"),
    ("LAMSTREAM_WINDOWS_S", "60,-5"),
    ("LAMSTREAM_WINDOWS_S", "60,0"),
    ("LAMSTREAM_WINDOWS_S", "60,60"),
    ("LAMSTREAM_WINDOWS_S", ""),
    ("LAMSTREAM_WINDOWS_S", "60\n,x"),
    ("LAMSTREAM_RECOMMEND_ON", "view,bogus"),
    ("LAMSTREAM_SECURITY_PROTOCOL", "TLS"),
    ("LAMSTREAM_SASL_MECHANISM", "GSSAPI"),
])
def test_an_invalid_value_fails_with_one_line_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch, env: str, value: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    assert f"{env}:" in message, message
    assert "settings:" not in message.removeprefix("invalid settings:")


def test_every_invalid_variable_is_named_in_the_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMSTREAM_PARTITIONS", "0")
    monkeypatch.setenv("LAMSTREAM_WEB_PORT", "x")
    message = str(pytest.raises(SettingsError, load_settings).value)
    assert "LAMSTREAM_PARTITIONS" in message and "LAMSTREAM_WEB_PORT" in message
    assert "\n" not in message


@pytest.mark.parametrize(("env", "names"), [
    ({"LAMSTREAM_SASL_MECHANISM": "PLAIN"}, ["LAMSTREAM_SECURITY_PROTOCOL"]),
    ({"LAMSTREAM_SECURITY_PROTOCOL": "SASL_SSL"},
     ["LAMSTREAM_SASL_MECHANISM", "LAMSTREAM_SASL_USERNAME", "LAMSTREAM_SASL_PASSWORD"]),
    ({"LAMSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "LAMSTREAM_SASL_MECHANISM": "PLAIN",
      "LAMSTREAM_SASL_USERNAME": "app"}, ["LAMSTREAM_SASL_PASSWORD"]),
    ({"LAMSTREAM_SECURITY_PROTOCOL": "SASL_SSL", "LAMSTREAM_SASL_MECHANISM": "PLAIN",
      "LAMSTREAM_SASL_USERNAME": "app", "LAMSTREAM_SASL_PASSWORD": ""},
     ["LAMSTREAM_SASL_PASSWORD"]),
])
def test_incomplete_sasl_names_what_is_missing(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], names: list[str]) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    message = str(pytest.raises(SettingsError, load_settings).value)
    assert "\n" not in message
    for name in names:
        assert name in message, message


def test_sasl_settings_reach_the_kafka_client_and_the_password_stays_secret(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMSTREAM_BOOTSTRAP_SERVERS", "kafka:9093")
    monkeypatch.setenv("LAMSTREAM_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("LAMSTREAM_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("LAMSTREAM_SASL_USERNAME", "app")
    monkeypatch.setenv("LAMSTREAM_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("LAMSTREAM_SSL_CAFILE", "/etc/ca.pem")
    s = load_settings()
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    assert s.kafka_python_config() == {
        "bootstrap_servers": ["kafka:9093"], "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "app",
        "sasl_plain_password": "hunter2", "ssl_cafile": "/etc/ca.pem",
    }


def test_plaintext_config_has_no_security_extras() -> None:
    assert load_settings(bootstrap_servers="b:1").kafka_python_config() == {
        "bootstrap_servers": ["b:1"], "security_protocol": "PLAINTEXT"}


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


@pytest.mark.parametrize(("seconds", "label"), [
    (60, "1m"), (3600, "1h"), (86400, "24h"), (90, "90s"), (300, "5m"), (7200, "2h"), (1, "1s")])
def test_window_labels(seconds: int, label: str) -> None:
    assert window_label(seconds) == label


def test_settings_read_the_environment_when_built_not_at_import(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMSTREAM_APP_ID", "first")
    assert Settings().app_id == "first"
    monkeypatch.setenv("LAMSTREAM_APP_ID", "second")
    assert load_settings().app_id == "second"


def test_security_settings_reach_the_aiokafka_clients_of_the_benchmarks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """bench pipeline's own clients (raw passthrough, latency probe, floor) connect with the
    same SASL / TLS settings as the worker, and aiokafka accepts them as given."""
    import asyncio
    import ssl

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    monkeypatch.setenv("LAMSTREAM_BOOTSTRAP_SERVERS", "kafka:9093")
    monkeypatch.setenv("LAMSTREAM_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("LAMSTREAM_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("LAMSTREAM_SASL_USERNAME", "app")
    monkeypatch.setenv("LAMSTREAM_SASL_PASSWORD", "hunter2")
    cfg = load_settings().aiokafka_config()
    assert isinstance(cfg.pop("ssl_context"), ssl.SSLContext)
    assert cfg == {"bootstrap_servers": "kafka:9093", "security_protocol": "SASL_SSL",
                   "sasl_mechanism": "SCRAM-SHA-256", "sasl_plain_username": "app",
                   "sasl_plain_password": "hunter2"}

    async def build() -> None:  # the constructors check the combination, no broker needed
        cfg = load_settings().aiokafka_config()
        AIOKafkaProducer(**cfg)
        AIOKafkaConsumer(**cfg)

    asyncio.run(build())
    for name in ("SECURITY_PROTOCOL", "SASL_MECHANISM", "SASL_USERNAME", "SASL_PASSWORD"):
        monkeypatch.delenv(f"LAMSTREAM_{name}")
    assert load_settings(bootstrap_servers="b:1").aiokafka_config() == {
        "bootstrap_servers": "b:1", "security_protocol": "PLAINTEXT"}


def test_the_worker_takes_its_switch_interval_from_the_settings() -> None:
    import sys

    from stream.cli.service import tune_switching

    before = sys.getswitchinterval()
    try:
        tune_switching(load_settings(gil_switch_ms=20))
        assert sys.getswitchinterval() == pytest.approx(0.020)
        tune_switching(load_settings())
        assert sys.getswitchinterval() == pytest.approx(0.050)
    finally:
        sys.setswitchinterval(before)
    with pytest.raises(SettingsError, match="LAMSTREAM_GIL_SWITCH_MS"):
        load_settings(gil_switch_ms=0)


def test_the_advertised_url_is_how_peers_reach_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().advertised_url() == "http://127.0.0.1:6066"
    assert load_settings(web_host="10.0.0.5", web_port=7000).advertised_url() == \
        "http://10.0.0.5:7000"
    monkeypatch.setattr("socket.getfqdn", lambda: "worker-1.lamstream-worker.ns.svc")
    assert load_settings(web_host="0.0.0.0").advertised_url() == \
        "http://worker-1.lamstream-worker.ns.svc:6066"
    monkeypatch.setenv("LAMSTREAM_WEB_ADVERTISED_URL", "http://lamstream-worker-2.lw:6066")
    assert load_settings(web_host="0.0.0.0").advertised_url() == "http://lamstream-worker-2.lw:6066"
    monkeypatch.setenv("LAMSTREAM_WEB_ADVERTISED_URL", "worker-2:6066")
    with pytest.raises(SettingsError, match="LAMSTREAM_WEB_ADVERTISED_URL"):
        load_settings()


def test_a_settings_error_is_a_lamstream_error_and_still_a_value_error() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(partitions=0)
    assert isinstance(info.value, LamstreamError)
    assert isinstance(info.value, ValueError)


def test_every_setting_is_documented_in_one_section_in_section_order() -> None:
    from stream.settings import SECTIONS

    seen: list[str] = []
    for name, field in Settings.model_fields.items():
        assert field.description and field.description.strip(), f"{name} has no description"
        extra = field.json_schema_extra
        assert isinstance(extra, dict) and extra.get("section") in SECTIONS, name
        section = str(extra["section"])
        if not seen or seen[-1] != section:
            # a section's fields stand together, and the sections in SECTIONS' order
            assert section not in seen, f"{name}: section {section} is split"
            seen.append(section)
    assert seen == list(SECTIONS)


def test_a_field_in_an_unknown_section_is_refused() -> None:
    from stream.settings import _in

    assert _in("trainer") == {"section": "trainer"}
    with pytest.raises(KeyError, match="no settings section"):
        _in("trainers")
