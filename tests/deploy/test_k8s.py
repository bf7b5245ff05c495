"""deploy/k8s: every overlay rendered with kustomize and validated offline against the
Kubernetes JSON schemas (kubernetes-validate, strict), then checked against the app."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from stream.settings import Settings
from stream.topics import topics_for

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ["dev", "gpu"]
# Oldest and newest Kubernetes minor we claim; strict = unknown fields are errors.
K8S_VERSIONS = ["1.30", "1.37"]
CRD_GROUPS = {"keda.sh"}  # no schema offline; checked structurally below


def kustomize(path: Path) -> list[dict[str, Any]]:
    """Render with the kustomize built into kubectl (kubectl >= 1.14 bundles it)."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.fail("kubectl not found: the deploy tests render kustomize with `kubectl "
                    "kustomize` (the machine image ships kubectl 1.32 / kustomize 5.5)")
    proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    docs = {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}
    docs["base"] = kustomize(K8S / "base")
    return docs


@pytest.fixture(scope="module")
def with_keda(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The base plus the optional KEDA component, as a user would add it to an overlay."""
    root = tmp_path_factory.mktemp("keda-overlay")
    (root / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "base", root)],
        "components": [os.path.relpath(K8S / "components" / "keda", root)],
    }))
    return kustomize(root)


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind
            and (name is None or d["metadata"]["name"] == name)]


def only(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def worker(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return only(docs, "StatefulSet", "lamstream-worker")


def feedback(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return only(docs, "StatefulSet", "lamstream-feedback")


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_spec["containers"] + pod_spec.get("initContainers", [])
                if c["name"] == name)


def example_secret() -> dict[str, str]:
    doc = yaml.safe_load(
        (K8S / "components" / "example-secret" / "secret.example.yaml").read_text())
    return doc["stringData"]


def container_env(docs: list[dict[str, Any]], c: dict[str, Any],
                  pod_name: str = "pod-0") -> dict[str, str]:
    """What the container sees: envFrom ConfigMap/Secret (in order), then env overrides, with
    the pod's name from the downward API and $(VAR) references expanded as the kubelet does.
    Where the Secret is not rendered (created out of band), its example keys stand in."""
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            env.update(only(docs, "ConfigMap", src["configMapRef"]["name"])["data"])
        if "secretRef" in src:
            secrets = find(docs, "Secret", src["secretRef"]["name"])
            env.update(secrets[0].get("stringData", {}) if secrets else example_secret())
    for item in c.get("env", []):
        if "valueFrom" in item:
            assert item["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, item
            env[item["name"]] = pod_name
        else:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)],
                                       item["value"])
    return env


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("LAMSTREAM_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in docs
            if d["kind"] in ("StatefulSet", "Deployment", "Job")]


def lamstream_pods(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(n, s) for n, s in pod_specs(docs) if n.startswith("lamstream-")]


def assert_probes(main: dict[str, Any], port: int, liveness: str) -> None:
    """Startup and readiness on GET /health of the named port `port`; liveness by `liveness`
    (httpGet /health, or tcpSocket where a rebalance may hold /health at 503 for long)."""
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert port > 0
    for probe in ("startupProbe", "readinessProbe"):
        get = main[probe]["httpGet"]
        assert get["path"] == "/health", probe
        assert ports[get["port"]] == port, probe
    live = main["livenessProbe"][liveness]
    assert ports[live["port"]] == port
    assert liveness == "tcpSocket" or live["path"] == "/health"
    assert main["startupProbe"]["failureThreshold"] * main["startupProbe"]["periodSeconds"] \
        >= 300, "recovery or model loading at start gets minutes"


def qty(value: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "k": 1e3, "M": 1e6, "G": 1e9}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert m, value
    return float(m.group(1)) * units.get(m.group(2), 1)


# ------------------------------------------------------------------ schemas


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_overlay_validates_against_kubernetes_schemas(
        rendered: dict[str, list[dict[str, Any]]], overlay: str, version: str) -> None:
    docs = rendered[overlay]
    assert len(docs) >= 9
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(map(str, exc.path))
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")


def test_base_renders_and_validates_without_crds(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["base"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
    assert not find(docs, "Secret"), "the base must not ship secret values"
    assert not [d for d in docs if d["apiVersion"].split("/")[0] in CRD_GROUPS]


def test_keda_component_validates(with_keda: list[dict[str, Any]]) -> None:
    crds = []
    for doc in with_keda:
        try:
            kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
        except SchemaNotFoundError:
            assert doc["apiVersion"].split("/")[0] in CRD_GROUPS, doc["kind"]
            crds.append(doc["kind"])
    assert sorted(crds) == ["ScaledObject", "TriggerAuthentication"]


# ------------------------------------------------------------------ worker


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_worker_statefulset_has_state_probes_and_limits(
        rendered: dict[str, list[dict[str, Any]]], overlay: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered[overlay]
    sts = worker(docs)
    spec = sts["spec"]["template"]["spec"]
    main = container(spec, "worker")
    assert main["args"] == ["worker"]
    settings = settings_from(container_env(docs, main), monkeypatch)

    # One PersistentVolumeClaim per pod, mounted where the settings put table state.
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert qty(claim["spec"]["resources"]["requests"]["storage"]) >= 2**30
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    assert mounts[str(settings.data_dir)] == claim["metadata"]["name"]
    # The registry is shared with the trainer (one claim, not per pod).
    models = mounts[f"{settings.data_dir}/models"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[models]["persistentVolumeClaim"]["claimName"] == "lamstream-models"

    # Probes on /health, on the port the settings make the worker listen on.
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert settings.web_host == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = main[probe]["httpGet"]
        assert get["path"] == "/health", probe
        assert ports[get["port"]] == settings.web_port, probe
    # Startup tolerates a long table restore; liveness does not kill during a rebalance.
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    live = main["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 60

    grace = spec["terminationGracePeriodSeconds"]
    assert 20 <= grace <= 120, "SIGTERM shutdown: commit, flush, close tables"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_every_container_has_requests_and_limits(
        rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for pod, spec in pod_specs(rendered[overlay]):
        for c in spec["containers"] + spec.get("initContainers", []):
            res = c["resources"]
            for key in ("cpu", "memory"):
                req, lim = res["requests"][key], res["limits"][key]
                assert qty(req) <= qty(lim), f"{pod}/{c['name']} {key}: {req} > {lim}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_the_image_user_without_privileges(
        rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    uid = int(re.findall(r"^USER (\d+)", dockerfile, re.M)[-1])
    for pod, spec in lamstream_pods(rendered[overlay]):
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True
        assert ctx["runAsUser"] == uid == ctx["fsGroup"], pod
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            if sc.get("readOnlyRootFilesystem"):
                assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, c["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_headless_service_and_pdb_select_the_workers(
        rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    sts = worker(docs)
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = only(docs, "Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= labels.items()
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in container(
        sts["spec"]["template"]["spec"], "worker")["ports"]}
    pdb = only(docs, "PodDisruptionBudget", sts["metadata"]["name"])
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_each_worker_advertises_its_stable_name_to_its_peers(
        rendered: dict[str, list[dict[str, Any]]], overlay: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """/features on any worker asks the owner of the user's partition at the URL the owner
    advertised: it must be the pod's own name under the headless Service, on its HTTP port."""
    docs = rendered[overlay]
    sts = worker(docs)
    main = container(sts["spec"]["template"]["spec"], "worker")
    pod = f"{sts['metadata']['name']}-1"
    settings = settings_from(container_env(docs, main, pod_name=pod), monkeypatch)
    svc = only(docs, "Service", sts["spec"]["serviceName"])
    (port,) = svc["spec"]["ports"]
    assert port["port"] == settings.web_port
    assert settings.advertised_url() == \
        f"http://{pod}.{svc['metadata']['name']}:{settings.web_port}"


# ------------------------------------------------------------------ feedback join


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_feedback_statefulset_has_state_and_limits(
        rendered: dict[str, list[dict[str, Any]]], overlay: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered[overlay]
    sts = feedback(docs)
    spec = sts["spec"]["template"]["spec"]
    main = container(spec, "feedback")
    assert main["args"] == ["feedback"]
    settings = settings_from(container_env(docs, main), monkeypatch)
    assert settings.pseudonym_key is not None, "`lamstream feedback` refuses to start without"
    assert any("secretRef" in s for s in main["envFrom"]), "the pseudonym key is a secret"

    # One PersistentVolumeClaim per pod for the RocksDB join table, at DATA_DIR.
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert qty(claim["spec"]["resources"]["requests"]["storage"]) >= 2**30
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    assert mounts[str(settings.data_dir)] == claim["metadata"]["name"]
    assert f"{settings.data_dir}/models" not in mounts, "the join loads no model"

    # Faust's web server is off; stream.probes serves /health and /metrics on its port.
    assert_probes(main, settings.feedback_web_port, liveness="tcpSocket")
    for key in ("cpu", "memory"):
        assert main["resources"]["limits"][key] and main["resources"]["requests"][key]

    # A peer group next to the workers': same app id (group <app_id>-feedback), same
    # topics with the same partitions (decisions and events are co-partitioned).
    wmain = container(worker(docs)["spec"]["template"]["spec"], "worker")
    wset = settings_from(container_env(docs, wmain), monkeypatch)
    assert (settings.app_id, settings.topic_prefix, settings.partitions) == (
        wset.app_id, wset.topic_prefix, wset.partitions)
    assert wset.decision_log, "the workers must publish `decisions` for the join"
    assert 1 <= sts["spec"]["replicas"] <= settings.partitions
    assert not main["image"].endswith("-cu128"), "the join needs no GPU"
    assert "nvidia.com/gpu" not in main["resources"]["limits"]

    grace = spec["terminationGracePeriodSeconds"]
    assert 20 <= grace <= 120, "SIGTERM shutdown: commit, flush, close the table"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"

    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = only(docs, "Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= labels.items()
    pdb = only(docs, "PodDisruptionBudget", sts["metadata"]["name"])
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    # Neither the worker's Service nor its PDB may select the join's pods, and vice versa.
    wlabels = worker(docs)["spec"]["template"]["metadata"]["labels"]
    assert not svc["spec"]["selector"].items() <= wlabels.items()
    assert not pdb["spec"]["selector"]["matchLabels"].items() <= wlabels.items()
    wpdb = only(docs, "PodDisruptionBudget", "lamstream-worker")
    assert not wpdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_dev_overlay_shrinks_every_lamstream_pod(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    base = dict(lamstream_pods(rendered["base"]))
    dev = dict(lamstream_pods(rendered["dev"]))
    assert set(dev) == set(base) == {"lamstream-worker", "lamstream-feedback",
                                     "lamstream-trainer"}
    for pod, spec in dev.items():
        (main,) = spec["containers"]
        (big,) = base[pod]["containers"]
        for kind in ("requests", "limits"):
            for key in ("cpu", "memory"):
                assert qty(main["resources"][kind][key]) < qty(big["resources"][kind][key]), \
                    f"{pod} {kind}.{key}: dev is not smaller than base"
    for name in ("lamstream-worker", "lamstream-feedback"):
        small = only(rendered["dev"], "StatefulSet", name)
        big = only(rendered["base"], "StatefulSet", name)
        assert small["spec"]["replicas"] < big["spec"]["replicas"], name
        (claim,) = small["spec"]["volumeClaimTemplates"]
        (big_claim,) = big["spec"]["volumeClaimTemplates"]
        assert qty(claim["spec"]["resources"]["requests"]["storage"]) < qty(
            big_claim["spec"]["resources"]["requests"]["storage"]), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trainer_is_a_single_writer_deployment(
        rendered: dict[str, list[dict[str, Any]]], overlay: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered[overlay]
    dep = only(docs, "Deployment", "lamstream-trainer")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    spec = dep["spec"]["template"]["spec"]
    main = container(spec, "trainer")
    assert main["args"] == ["trainer"]
    settings = settings_from(container_env(docs, main), monkeypatch)
    volumes = {v["name"]: v for v in spec["volumes"]}
    claims = {m["mountPath"]: volumes[m["name"]].get("persistentVolumeClaim", {}).get("claimName")
              for m in main["volumeMounts"]}
    assert claims[str(settings.data_dir)] == "lamstream-trainer"
    assert claims[f"{settings.data_dir}/models"] == "lamstream-models"
    pvc = only(docs, "PersistentVolumeClaim", "lamstream-models")
    expected = ["ReadWriteOnce"] if overlay == "dev" else ["ReadWriteMany"]
    assert pvc["spec"]["accessModes"] == expected
    assert_probes(main, settings.trainer_web_port, liveness="httpGet")


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_workers_reach_the_feedback_join_and_trainer_probes_by_service(
        rendered: dict[str, list[dict[str, Any]]], overlay: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The Learning panel's FEEDBACK_URL / TRAINER_URL name a Service that selects those pods
    on their probe port; Prometheus finds every pod by its scrape annotations."""
    docs = rendered[overlay]
    wmain = container(worker(docs)["spec"]["template"]["spec"], "worker")
    wset = settings_from(container_env(docs, wmain), monkeypatch)
    for kind, name, url, port in (
            ("StatefulSet", "lamstream-feedback", wset.feedback_url, wset.feedback_web_port),
            ("Deployment", "lamstream-trainer", wset.trainer_url, wset.trainer_web_port)):
        assert url == f"http://{name}:{port}"
        svc = only(docs, "Service", name)
        (svc_port,) = svc["spec"]["ports"]
        assert svc_port["port"] == port and svc_port["targetPort"] == "probes"
        template = only(docs, kind, name)["spec"]["template"]
        assert svc["spec"]["selector"].items() <= template["metadata"]["labels"].items()
        notes = template["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true"
        assert int(notes["prometheus.io/port"]) == port
        assert notes["prometheus.io/path"] == "/metrics"


def test_dev_kafka_has_tcp_probes_on_its_port(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    main = container(only(rendered["dev"], "StatefulSet", "kafka")["spec"]["template"]["spec"],
                     "kafka")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["tcpSocket"]["port"] == "kafka", probe
    assert {p["name"]: p["containerPort"] for p in main["ports"]}["kafka"] == 9092


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_lamstream_container_gets_valid_settings(
        rendered: dict[str, list[dict[str, Any]]], overlay: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered[overlay]
    seen = 0
    for _pod, spec in lamstream_pods(docs):
        for c in spec["containers"] + spec.get("initContainers", []):
            assert c["image"].startswith("lamstream:"), c["image"]
            assert c["args"][0] in {"worker", "feedback", "trainer", "topics"}
            for src in c["envFrom"]:  # every referenced ConfigMap is rendered
                if "configMapRef" in src:
                    only(docs, "ConfigMap", src["configMapRef"]["name"])
            settings_from(container_env(docs, c), monkeypatch)  # raises when invalid
            seen += 1
    assert seen == 6  # worker, feedback join and trainer, each with its topics init


def test_dev_overlay_is_self_contained(
        rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered["dev"]
    ns = only(docs, "Namespace")["metadata"]["name"]
    assert ns == "lamstream-dev"
    assert all(d["metadata"].get("namespace") == ns for d in docs if d["kind"] != "Namespace")
    settings = settings_from(container_env(docs, container(
        worker(docs)["spec"]["template"]["spec"], "worker")), monkeypatch)
    kafka = only(docs, "StatefulSet", "kafka")
    svc = only(docs, "Service", "kafka")
    assert settings.bootstrap == f"kafka:{svc['spec']['ports'][0]['port']}"
    assert settings.security_protocol == "PLAINTEXT"
    assert settings.replication_factor <= kafka["spec"]["replicas"]
    secret = only(docs, "Secret", "lamstream-secrets")
    assert secret["metadata"]["annotations"]["lamstream.io/example-values"].startswith("true")
    assert all(v.startswith("EXAMPLE") or k == "LAMSTREAM_SASL_USERNAME"
               for k, v in secret["stringData"].items())


def test_gpu_overlay_puts_workers_on_gpus(
        rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered["gpu"]
    spec = worker(docs)["spec"]["template"]["spec"]
    main = container(spec, "worker")
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        spec["tolerations"]
    assert main["image"].endswith("-cu128")
    assert settings_from(container_env(docs, main), monkeypatch).device == "cuda"
    trainer = container(only(docs, "Deployment")["spec"]["template"]["spec"], "trainer")
    assert not trainer["image"].endswith("-cu128"), "the trainer stays on the CPU image"
    assert "nvidia.com/gpu" not in trainer["resources"]["limits"]
    assert settings_from(container_env(docs, trainer), monkeypatch).device == "cpu"
    join = feedback(docs)["spec"]["template"]["spec"]
    assert "nodeSelector" not in join and "tolerations" not in join, "the join stays on CPU"
    assert not container(join, "feedback")["image"].endswith("-cu128")
    # Production shape: credentials come from a Secret created out of band.
    assert not find(docs, "Secret")
    cfg = settings_from(container_env(docs, trainer), monkeypatch)
    assert cfg.security_protocol == "SASL_SSL" and cfg.sasl_mechanism
    for pod, pod_spec in lamstream_pods(docs):
        assert "lamstream-kafka-tls" in {v.get("secret", {}).get("secretName")
                                         for v in pod_spec["volumes"]}, pod
        tls = next(m for c in pod_spec["containers"] for m in c["volumeMounts"]
                   if m["name"] == "kafka-tls")
        assert str(cfg.ssl_cafile).startswith(tls["mountPath"] + "/")


# ------------------------------------------------------------------ KEDA


def test_keda_scales_the_worker_on_consumer_lag(
        with_keda: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    sts = worker(with_keda)
    assert "replicas" not in sts["spec"], "KEDA owns the replica count"
    env = container_env(with_keda, container(sts["spec"]["template"]["spec"], "worker"))
    settings = settings_from(env, monkeypatch)
    scaled = only(with_keda, "ScaledObject")
    ref = scaled["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        "apps/v1", "StatefulSet", sts["metadata"]["name"])
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    assert scaled["spec"]["maxReplicaCount"] <= settings.partitions
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["topic"] == topics_for(settings).events.name
    # *FromEnv names are read from the worker container's environment.
    assert env[meta["bootstrapServersFromEnv"]] == settings.bootstrap
    assert env[meta["consumerGroupFromEnv"]] == settings.app_id
    assert int(meta["lagThreshold"]) > 0
    keda_sasl = {None: "none", "PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256",
                 "SCRAM-SHA-512": "scram_sha512"}
    assert meta["sasl"] == keda_sasl[settings.sasl_mechanism]
    assert (meta["tls"] == "enable") == settings.security_protocol.endswith("SSL")
    auth = only(with_keda, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    secret_keys = set(example_secret())
    for ref in auth["spec"]["secretTargetRef"]:
        if ref["name"] == "lamstream-secrets":
            assert ref["key"] in secret_keys
        else:  # the CA the workers read
            assert ref["name"] == "lamstream-kafka-tls"
            assert Path(str(settings.ssl_cafile)).name == ref["key"]
