"""The files under deploy/: every one parses, and what must agree with conveyor agrees.

Nothing here can start them (no Docker engine, no cluster), so the tests hold them to
conveyor's own model instead: settings through ``Settings.from_env`` (an unknown
``CONVEYOR_*`` variable is an error), topic names, consumer groups and partition counts
through ``Topology``, and metric names through ``metric_names()``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from conveyor.settings import Settings
from conveyor.topology import PRIORITIES, PRIORITY_WEIGHTS, Topology

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
EXAMPLE_APP = "conveyor.example_app:worker"
DATASOURCE_VARIABLE = "${datasource}"
# KEDA's kafka trigger names conveyor's CONVEYOR_SASL_MECHANISM values its own way.
KEDA_SASL = {
    None: "none",
    "PLAIN": "plaintext",
    "SCRAM-SHA-256": "scram_sha256",
    "SCRAM-SHA-512": "scram_sha512",
}


def load_yaml(path: Path) -> list[Any]:
    """Every document of a YAML file, without the empty ones."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def deploy_files() -> list[Path]:
    return sorted(
        p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml", ".json") and p.is_file()
    )


@pytest.mark.parametrize("path", deploy_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_and_json_file_under_deploy_parses(path: Path) -> None:
    docs = [json.loads(path.read_text())] if path.suffix == ".json" else load_yaml(path)
    assert docs, f"{path} holds no document"
    assert all(isinstance(doc, dict) for doc in docs)


# --- PromQL -----------------------------------------------------------------------------

_PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_PROMQL_SELECTOR = re.compile(r"\{[^{}]*\}")
_PROMQL_RANGE = re.compile(r"\[[^\[\]]*\]")
_PROMQL_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_PROMQL_NUMBER = re.compile(r"(?<![\w:])\d[\d.]*(?:e[+-]?\d+)?(?:ms|[smhdwy])*")
_PROMQL_IDENTIFIER = re.compile(r"[A-Za-z_:][\w:]*")
_PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "by", "without", "on"}
)
_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,")


def promql_metric_names(expr: str) -> set[str]:
    """The series names an expression selects: not functions, keywords, labels or numbers."""
    text = _PROMQL_STRING.sub(" ", expr)
    text = _PROMQL_SELECTOR.sub(" ", text)
    text = _PROMQL_RANGE.sub(" ", text)
    text = _PROMQL_GROUPING.sub(" ", text)
    text = _PROMQL_NUMBER.sub(" ", text)
    names = set()
    for match in _PROMQL_IDENTIFIER.finditer(text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() not in _PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def test_promql_metric_names_skips_functions_labels_strings_durations_and_keywords() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, priority) (rate(conveyor_a_bucket"
        '{priority=~"$priority", type="x y"}[$__rate_interval]))) > bool 0.5'
        " unless on (priority) max(conveyor_b offset 30m)"
        " or sum(rate(other_total[5m])) without (instance) * 1e3"
    )
    assert promql_metric_names(expr) == {"conveyor_a_bucket", "conveyor_b", "other_total"}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "grafana" / "conveyor.json").read_text())
    return data


def dashboard_exprs() -> list[str]:
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    (doc,) = load_yaml(DEPLOY / "prometheus" / "alerts.yaml")
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_metric_the_dashboard_and_alerts_query_is_exported() -> None:
    from conveyor.observability.metrics import metric_names

    referenced: dict[str, set[str]] = {}
    sources = {"dashboard": dashboard_exprs(), "alerts": [r["expr"] for r in alert_rules()]}
    for source, exprs in sources.items():
        for expr in exprs:
            for name in promql_metric_names(expr):
                referenced.setdefault(name, set()).add(source)
    for variable in dashboard()["templating"]["list"]:
        for name in _LABEL_VALUES.findall(variable.get("definition", "")):
            referenced.setdefault(name, set()).add("dashboard variables")
    assert {
        "conveyor_jobs_completed_total",
        "conveyor_job_wait_seconds_bucket",
        "conveyor_queue_depth",
        "conveyor_dlq_pending",
    } <= referenced.keys()
    known = metric_names()
    assert {name: where for name, where in referenced.items() if name not in known} == {}


# --- Grafana and Prometheus -------------------------------------------------------------


def test_dashboard_shows_throughput_latency_lag_dlq_failures_and_in_flight() -> None:
    exprs = dashboard_exprs()

    def shown(*fragments: str) -> bool:
        return any(all(f in expr for f in fragments) for expr in exprs)

    assert shown("sum by (priority)", "rate(conveyor_jobs_completed_total")
    for histogram in ("conveyor_job_wait_seconds_bucket", "conveyor_job_duration_seconds_bucket"):
        for quantile in ("0.5", "0.95", "0.99"):
            assert shown(f"histogram_quantile({quantile},", "by (le, priority)", histogram)
    assert shown("sum by (priority)", "conveyor_queue_depth")
    assert shown("max(conveyor_dlq_pending)")
    assert shown("sum by (reason)", "conveyor_jobs_failed_total")
    assert shown("sum by (priority)", "conveyor_jobs_in_flight")


def test_dashboard_panels_use_the_datasource_variable_and_fit_the_grid() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == DATASOURCE_VARIABLE
            assert {t["datasource"]["uid"] for t in panel["targets"]} == {DATASOURCE_VARIABLE}


def test_alert_rules_cover_lag_dlq_no_consumption_and_failure_rate() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert {
        "ConveyorLagGrowing",
        "ConveyorDLQRising",
        "ConveyorNoConsumption",
        "ConveyorHighFailureRate",
    } <= set(names)
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]


# --- docker compose ---------------------------------------------------------------------


def compose() -> dict[str, Any]:
    (doc,) = load_yaml(DEPLOY / "compose.yaml")
    data: dict[str, Any] = doc
    return data


def compose_settings(service: dict[str, Any]) -> Settings:
    return Settings.from_env({k: str(v) for k, v in service["environment"].items()})


def test_compose_runs_one_worker_service_per_priority_weighted_4_3_2_1() -> None:
    services = compose()["services"]
    workers = {name: s for name, s in services.items() if s.get("command", [None])[0] == "worker"}
    assert set(workers) == {f"worker-{p}" for p in PRIORITIES}
    for priority in PRIORITIES:
        service = workers[f"worker-{priority}"]
        assert service["command"] == ["worker", EXAMPLE_APP, "--priorities", priority]
        replicas = service["deploy"]["replicas"]
        assert replicas == PRIORITY_WEIGHTS[priority]
        topology = Topology.from_settings(compose_settings(service))
        assert replicas <= topology.spec(topology.job_topic(priority)).partitions
        assert service["depends_on"]["init"] == {"condition": "service_completed_successfully"}
        port = compose_settings(service).metrics_port
        assert f"http://127.0.0.1:{port}/healthz" in " ".join(service["healthcheck"]["test"])


def test_compose_conveyor_services_share_valid_settings_that_name_the_stack() -> None:
    services = compose()["services"]
    conveyor = {name: s for name, s in services.items() if s.get("image") == "conveyor:local"}
    assert {"init", "registry", "cli", *(f"worker-{p}" for p in PRIORITIES)} <= set(conveyor)
    environments = {json.dumps(s["environment"], sort_keys=True) for s in conveyor.values()}
    assert len(environments) == 1
    settings = compose_settings(services["init"])
    assert settings.kafka_bootstrap.split(":")[0] == "kafka"
    assert urlsplit(settings.database_url).hostname == "postgres"
    registry = urlsplit(settings.schema_registry_url)
    assert registry.hostname == "registry"
    assert services["registry"]["command"][-2:] == ["--port", str(registry.port)]
    assert services["kafka"]["image"] == "apache/kafka:3.9.0"
    assert set(services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"].split(",")) == {
        "broker",
        "controller",
    }
    assert services["postgres"]["image"].startswith("postgres:16")


def test_compose_init_migrates_then_applies_the_topology_once_kafka_and_postgres_are_up() -> None:
    init = compose()["services"]["init"]
    assert init["entrypoint"] == ["sh", "-c"]
    assert init["command"] == ["conveyor migrate && conveyor topology apply"]
    assert init["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }


def test_compose_mounts_exist_and_prometheus_and_grafana_are_wired_to_them() -> None:
    services = compose()["services"]
    mounts: dict[str, str] = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source
                mounts[target] = source
    build = services["init"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()

    (prometheus,) = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    assert [mounts[path] for path in prometheus["rule_files"]] == ["./prometheus/alerts.yaml"]
    (workers,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "conveyor-workers"]
    (dns,) = workers["dns_sd_configs"]
    assert sorted(dns["names"]) == sorted(f"worker-{p}" for p in PRIORITIES)
    assert dns["port"] == compose_settings(services["worker-low"]).metrics_port

    provisioning = DEPLOY / "grafana" / "provisioning"
    (providers,) = load_yaml(provisioning / "dashboards" / "conveyor.yaml")
    (provider,) = providers["providers"]
    dashboards = [t for t, s in mounts.items() if s == "./grafana/conveyor.json"]
    assert [str(Path(t).parent) for t in dashboards] == [provider["options"]["path"]]
    (sources,) = load_yaml(provisioning / "datasources" / "prometheus.yaml")
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in services


# --- the image --------------------------------------------------------------------------


def test_dockerfile_pins_its_base_by_tag_and_digest_and_runs_conveyor_as_non_root() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    bases = [args.get(b.strip("${}"), b) for b in re.findall(r"^FROM (\S+)", text, re.MULTILINE)]
    pinned = re.compile(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}")
    assert len(bases) == 2  # the build stage and the runtime stage
    assert all(pinned.fullmatch(base) for base in bases), bases
    users = re.findall(r"^USER (\d+)(?::\d+)?$", text, re.MULTILINE)
    assert [int(uid) for uid in users] == [10001]
    assert re.search(r'^ENTRYPOINT \["conveyor"\]$', text, re.MULTILINE)
    (install,) = re.findall(r"pip install (.+)$", text, re.MULTILINE)
    assert install.strip() == "."  # no dev or embedded extras
    assert (DEPLOY.parent / ".dockerignore").is_file()


# --- Kubernetes -------------------------------------------------------------------------


def k8s_objects() -> list[dict[str, Any]]:
    files = sorted(K8S.glob("*.yaml"))
    return [doc for f in files if f.name != "kustomization.yaml" for doc in load_yaml(f)]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] == kind}


def k8s_settings() -> Settings:
    (config,) = by_kind("ConfigMap").values()
    (secret,) = by_kind("Secret").values()
    assert not config["data"].keys() & secret["stringData"].keys()
    return Settings.from_env({**config["data"], **secret["stringData"]})


def k8s_topology() -> Topology:
    return Topology.from_settings(k8s_settings())


def labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return set(selector["matchLabels"].items()) <= set(labels.items())


def pod_specs() -> dict[str, dict[str, Any]]:
    workloads = {**by_kind("Deployment"), **by_kind("Job")}
    return {name: w["spec"]["template"]["spec"] for name, w in workloads.items()}


def test_kustomization_lists_every_manifest_and_all_share_one_namespace() -> None:
    (kustomization,) = load_yaml(K8S / "kustomization.yaml")
    files = {f.name for f in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    (namespace,) = by_kind("Namespace")
    spaced = [o for o in k8s_objects() if o["kind"] != "Namespace"]
    assert {o["metadata"]["namespace"] for o in spaced} == {namespace}
    # deploy/README.md applies all but the workers first: `-l component!=worker`.
    for obj in k8s_objects():
        component = obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        worker_kinds = ("Deployment", "PodDisruptionBudget", "ScaledObject")
        assert (component == "worker") == (obj["kind"] in worker_kinds), obj["metadata"]["name"]


def test_k8s_config_and_secret_make_valid_settings_that_keda_shares() -> None:
    settings = k8s_settings()
    (auth,) = by_kind("TriggerAuthentication").values()
    (secret,) = by_kind("Secret").values()
    secret_name = secret["metadata"]["name"]
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"username", "password"}
    assert {r["name"] for r in refs.values()} == {secret_name}
    assert refs["password"]["key"] == "CONVEYOR_SASL_PASSWORD"
    assert secret["stringData"][refs["username"]["key"]] == settings.sasl_username
    expected = [("configMapRef", next(iter(by_kind("ConfigMap")))), ("secretRef", secret_name)]
    for spec in pod_specs().values():
        for container in spec.get("initContainers", []) + spec["containers"]:
            env_from = container["envFrom"]
            assert [(kind, r["name"]) for ref in env_from for kind, r in ref.items()] == expected


def test_one_deployment_per_priority_topic_each_selected_by_exactly_its_pdb() -> None:
    deployments = by_kind("Deployment")
    budgets = by_kind("PodDisruptionBudget")
    served = {}
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"][:3] == ["worker", EXAMPLE_APP, "--priorities"]
        served[container["args"][3]] = name
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels_match(deployment["spec"]["selector"], pod_labels)
        assert "replicas" not in deployment["spec"]  # KEDA owns the count
    assert sorted(served) == sorted(PRIORITIES)
    for name, deployment in deployments.items():
        selector = deployment["spec"]["selector"]
        selected = {
            other
            for other, d in deployments.items()
            if labels_match(selector, d["spec"]["template"]["metadata"]["labels"])
        }
        assert selected == {name}
        covering = [
            pdb
            for pdb, b in budgets.items()
            if labels_match(
                b["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"]
            )
        ]
        assert len(covering) == 1, (name, covering)
        budget = budgets[covering[0]]["spec"]
        assert budget["selector"] == selector
        assert len({"minAvailable", "maxUnavailable"} & budget.keys()) == 1
    assert len(budgets) == len(deployments)


def test_scaled_objects_scale_each_deployment_on_its_group_lag_within_its_partitions() -> None:
    settings, topology = k8s_settings(), k8s_topology()
    deployments = by_kind("Deployment")
    auths = by_kind("TriggerAuthentication")
    targets = []
    for name, scaled in by_kind("ScaledObject").items():
        spec = scaled["spec"]
        target = spec["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment", name
        assert target["name"] in deployments, name
        targets.append(target["name"])
        (container,) = deployments[target["name"]]["spec"]["template"]["spec"]["containers"]
        priority = container["args"][3]
        partitions = topology.spec(topology.job_topic(priority)).partitions
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions, name
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert all(isinstance(value, str) for value in meta.values()), name
        assert meta["topic"] == topology.job_topic(priority)
        assert meta["consumerGroup"] == topology.consumer_group(priority)
        assert meta["bootstrapServers"] == settings.kafka_bootstrap
        assert meta.get("allowIdleConsumers", "false") == "false"
        assert meta.get("sasl", "none") == KEDA_SASL[settings.sasl_mechanism]
        uses_tls = (settings.security_protocol or "").endswith("SSL")
        assert meta.get("tls", "disable") == ("enable" if uses_tls else "disable")
        assert trigger["authenticationRef"]["name"] in auths
    assert sorted(targets) == sorted(deployments)


def test_worker_probes_and_scrape_annotations_use_the_named_metrics_port() -> None:
    port = k8s_settings().metrics_port
    for name, deployment in by_kind("Deployment").items():
        template = deployment["spec"]["template"]
        (container,) = template["spec"]["containers"]
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": port}
        probes = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
        if "startupProbe" in container:
            probes["startupProbe"] = "/healthz"
        for probe, path in probes.items():
            assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, name
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"


def test_migration_job_migrates_then_applies_the_topology() -> None:
    (job,) = by_kind("Job").values()
    spec = job["spec"]["template"]["spec"]
    assert [c["args"] for c in spec["initContainers"]] == [["migrate"]]
    assert [c["args"] for c in spec["containers"]] == [["topology", "apply"]]
    assert spec["restartPolicy"] in ("Never", "OnFailure")


def test_every_pod_runs_the_one_conveyor_image_as_non_root() -> None:
    images = set()
    for name, spec in pod_specs().items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            images.add(container["image"])
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
    (kustomization,) = load_yaml(K8S / "kustomization.yaml")
    (image,) = images
    assert [i["name"] for i in kustomization["images"]] == [image.rsplit(":", 1)[0]]
