"""The Dockerfile and the Helm chart, checked the way a platform reviewer would (no Docker engine here)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from gateway.api import ROUTES
from gateway.settings import Settings
from gateway.tenants import parse_config, resolve
from tests.support import config_yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "live-room-gateway"
MANAGED = {"config", "host", "port", "redis_url"}  # set by the chart itself

ALL_ON: dict[str, Any] = {
    "config": yaml.safe_load(config_yaml("https://adminapisgp.im.qcloud.com")),
    "secretKeys": [{"env": "ACME_SECRET_KEY", "secretName": "acme", "key": "secret-key"}],
    "redis": {"existingSecret": "redis-url"},
    "settings": {"log_level": "warning", "cache_ttl": 2.0, "drain_seconds": 25, "budget_max_wait": 1.5},
    "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 8},
    "networkPolicy": {"enabled": True, "allowFrom": [{"podSelector": {"matchLabels": {"team": "checkout"}}}]},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
    "imagePullSecrets": [{"name": "registry"}],
    "tracing": {
        "endpoint": "http://otel-collector.monitoring:4318",
        "resourceAttributes": {"deployment.environment": "production", "team name": "live rooms+ops"},
        "env": {"OTEL_BSP_SCHEDULE_DELAY": "2000"},
    },
}


def render(values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Rendered objects by kind (and name for kinds that appear twice)."""
    out = helm.Chart.load(CHART).render(values, name="lrg", namespace="live", is_install=True)
    objects: dict[str, dict[str, Any]] = {}
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects[doc["kind"]] = doc
    return objects


def container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (gateway,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = gateway
    return result


def env(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(objects)["env"]}


def test_dockerfile_lints_clean() -> None:
    """hadolint finds nothing in the Dockerfile."""
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_what_the_tests_run() -> None:
    """The image runs `gateway serve` as user 10001, the command the tests start and the chart's uid."""
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["gateway"]' in text
    assert 'CMD ["serve"]' in text
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)
    assert "STOPSIGNAL SIGTERM" in text
    assert text.index("COPY pyproject.toml") < text.index("COPY src/"), "dependencies before the source"


def test_the_image_holds_neither_the_emulator_nor_aiohttp() -> None:
    """The gateway's runtime dependencies (the image's requirements) name no aiohttp, and the emulator
    package (emulator/) is not in the build context."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith(("aiohttp", "live-engine-emulator"))]
    installed = [r for r in metadata.requires("live-room-gateway") or [] if "extra ==" not in r]
    assert not [r for r in installed if r.startswith("aiohttp")], installed
    context = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in context
    assert not [line for line in context if line.startswith("!") and "emulator" in line]


@pytest.mark.parametrize("values", [None, ALL_ON], ids=["defaults", "everything-on"])
def test_chart_lints_strict(values: dict[str, Any] | None) -> None:
    """helm lint --strict: no warning or error, with the defaults and with every optional part on."""
    report = helm.lint(CHART, values, strict=True, namespace="live")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values", [None, ALL_ON], ids=["defaults", "everything-on"])
def test_rendered_manifests_validate_strictly(values: dict[str, Any] | None, tmp_path: Path) -> None:
    """kubernetes-validate --strict accepts every rendered manifest (the Prometheus Operator's
    CRDs, which it has no schema for, are checked by hand below)."""
    objects = render(values)
    paths = []
    for kind, obj in objects.items():
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        path = tmp_path / f"{kind}.yaml"
        path.write_text(yaml.safe_dump(obj))
        paths.append(str(path))
    tool = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")
    result = subprocess.run([tool, "--strict", "--quiet", *paths], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    expected = {"Deployment", "Service", "Secret", "ServiceAccount", "PodDisruptionBudget"}
    if values:
        expected |= {"HorizontalPodAutoscaler", "NetworkPolicy", "ConfigMap"}
    assert expected <= set(objects)


def test_probes_point_at_real_endpoints_on_the_served_port() -> None:
    """Probes hit /livez and /readyz, which the app serves, on the port the service listens on."""
    objects = render()
    gateway = container(objects)
    served = {path for route in ROUTES for path in route.paths}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert gateway[probe]["httpGet"]["path"] in served
        assert gateway[probe]["httpGet"]["port"] == "http"
    (port,) = gateway["ports"]
    assert (port["name"], port["containerPort"]) == ("http", 8080)
    assert env(objects)["GATEWAY_PORT"] == "8080"
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == "http"


def test_pod_is_locked_down() -> None:
    """Non-root (the Dockerfile's uid), read-only root, no privilege escalation, no capabilities, seccomp."""
    objects = render()
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container(objects)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["topologySpreadConstraints"]


def test_shutdown_timing_fits_the_drain() -> None:
    """The grace period covers the preStop sleep plus the service's drain bound."""
    objects = render(ALL_ON)
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    pre_stop = container(objects)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert env(objects)["GATEWAY_DRAIN_SECONDS"] == "25"
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + 25


def test_hpa_maximum_reaches_the_gateway() -> None:
    """GATEWAY_MAX_REPLICAS (the degraded budget split) is the HPA's maximum, else the replica count."""
    objects = render(ALL_ON)
    assert objects["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] == 8
    assert env(objects)["GATEWAY_MAX_REPLICAS"] == "8"
    assert "replicas" not in objects["Deployment"]["spec"]
    assert env(render({"replicaCount": 3}))["GATEWAY_MAX_REPLICAS"] == "3"


def test_settings_become_the_services_variables() -> None:
    """Every chart setting is a real GATEWAY_* setting of the service, and parses."""
    variables = env(render(ALL_ON))
    fields = set(Settings.__struct_fields__)
    gateway_vars = {k: v for k, v in variables.items() if k.startswith("GATEWAY_")}
    for name in gateway_vars:
        assert name[len("GATEWAY_") :].lower() in fields, name
    plain = {k: v for k, v in gateway_vars.items() if isinstance(v, str)}
    from gateway.settings import settings_from_env

    assert settings_from_env(plain).cache_ttl == 2.0
    assert variables["GATEWAY_REDIS_URL"] == {"secretKeyRef": {"name": "redis-url", "key": "url"}}
    assert variables["ACME_SECRET_KEY"] == {"secretKeyRef": {"name": "acme", "key": "secret-key"}}


def test_tracing_values_become_the_otel_variables_the_gateway_reads() -> None:
    """With an endpoint, the chart sets the OTEL_* variables (the pod and namespace among the
    resource attributes) and the gateway builds a tracer provider from them; without, none."""
    variables = env(render(ALL_ON))
    assert variables["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.monitoring:4318"
    assert variables["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert variables["OTEL_RESOURCE_ATTRIBUTES"] == (
        "k8s.namespace.name=live,k8s.pod.name=$(POD_NAME),deployment.environment=production,"
        "team%20name=live%20rooms%2Bops"
    )
    assert variables["OTEL_BSP_SCHEDULE_DELAY"] == "2000"
    from gateway import tracing

    plain = {k: v for k, v in variables.items() if k.startswith("OTEL_")}
    provider = tracing.provider_from_env(plain)
    assert provider is not None
    assert provider.resource.attributes["deployment.environment"] == "production"
    assert provider.resource.attributes["team name"] == "live rooms+ops"
    provider.shutdown()
    assert not [k for k in env(render()) if k.startswith("OTEL_")]
    traces_only = env(
        render({"tracing": {"env": {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}}})
    )
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in traces_only
    assert traces_only["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert tracing.endpoint(traces_only) == "http://collector:4318/v1/traces"


def test_schema_settings_are_exactly_the_services() -> None:
    """values.schema.json's `settings` lists every service setting the chart does not manage itself."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]["settings"]["properties"]) == set(Settings.__struct_fields__) - MANAGED


@pytest.mark.parametrize(
    "typo",
    [
        {"replicaCont": 2},
        {"settings": {"cache_tll": 1}},
        {"autoscaling": {"maxReplica": 3}},
        {"redis": {"url": "http://redis"}},
        {"settings": {"log_level": "loud"}},
        {"tracing": {"sampler": "sometimes"}},
        {"tracing": {"env": {"GATEWAY_CACHE_TTL": "1"}}},
        {"tracing": {"env": {"OTEL_SERVICE_NAME": "twice"}}},
    ],
)
def test_schema_rejects_typos(typo: dict[str, Any]) -> None:
    """A misspelt or invalid value fails before anything is installed."""
    with pytest.raises(helm.HelmValuesError):
        helm.Chart.load(CHART).validate_schema(typo)


def test_config_secret_holds_a_valid_gateway_config() -> None:
    """The Secret rendered from values is a config file the gateway accepts."""
    objects = render(ALL_ON)
    text = objects["Secret"]["stringData"]["gateway.yaml"]
    directory = resolve(
        parse_config(text.encode(), source="gateway.yaml"),
        {"ACME_SECRET_KEY": "k", "GLOBEX_SECRET_KEY": "k", "ACME_CALLBACK_TOKEN": "t"},
    )
    assert set(directory.tenants) == {"acme", "globex"}
    mount = container(objects)["volumeMounts"][0]
    assert env(objects)["GATEWAY_CONFIG"] == f"{mount['mountPath']}/gateway.yaml"


def test_monitoring_objects_carry_the_shipped_rules_and_dashboard() -> None:
    """The PrometheusRule and dashboard ConfigMap are the repository's files, and scrape /metrics."""
    objects = render(ALL_ON)
    rules = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    assert objects["PrometheusRule"]["spec"] == rules
    dashboard = json.loads(objects["ConfigMap"]["data"]["live-room-gateway.json"])
    assert dashboard == json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    endpoint = objects["ServiceMonitor"]["spec"]["endpoints"][0]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert objects["ServiceMonitor"]["metadata"]["labels"]["release"] == "prometheus"


def test_notes_warn_about_missing_redis() -> None:
    """NOTES.txt warns when several replicas would run without shared Redis."""
    notes = helm.Chart.load(CHART).render(None, name="lrg", namespace="live")["live-room-gateway/templates/NOTES.txt"]
    assert "no Redis is configured" in notes
