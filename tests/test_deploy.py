"""The deployment files agree with the code and with each other: deploy/Dockerfile, deploy/compose.yaml
(+ the Prometheus config it mounts), and the kustomization in deploy/k8s/.

Static, offline and fast: no Docker, no cluster. The base kustomization is rendered here by reading the
files it lists (base/ uses no patches, so that is exact; ``kubectl kustomize``, when installed, must
agree), and every object is validated against the Kubernetes JSON schemas that ``kubernetes-validate``
ships. The probes, ports, env names and the HPA metric are checked against the gateway itself: its
routes (``gateway.routes.setup``), its settings (``gateway.settings.Settings``) and its metrics registry.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from gateway.app import create_app
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings
from gateway.tenants import TenantConfig, TenantRegistry

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
GRAFANA = ROOT / "grafana"

# Kubernetes versions the manifests must be valid for: the oldest supported (the preStop sleep action
# is on by default from 1.30) and the newest that kubernetes-validate knows.
K8S_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
# Kinds without a schema in kubernetes-validate (CRDs), checked structurally below instead.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
CLUSTER_SCOPED = {"Namespace"}
# The only fields base/kustomization.yaml may use, so that _render_base() renders it exactly.
RENDERED_FIELDS = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator"}

Objects = Sequence[dict[str, Any]]
IMAGE_UID = 10001
MIN_SCALE_DOWN_STABILIZATION = 600
# A plain env name that may hold a secret value.
SECRET_NAME = re.compile(r"SECRET|PASSWORD|API_KEY|TOKEN(?!_TTL)|DATABASE_URL|REDIS_URL")


# --- rendering --------------------------------------------------------------------------------------


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _kustomization(directory: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    return data


@cache
def _render_base() -> tuple[dict[str, Any], ...]:
    """base/ as ``kubectl kustomize`` renders it: its resources, its generated ConfigMaps, the namespace."""
    kustomization = _kustomization(BASE)
    assert set(kustomization) <= RENDERED_FIELDS, "extend _render_base() for the new kustomize fields"
    objects: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        objects += _load_all(BASE / name)
    for generator in kustomization.get("configMapGenerator", []):
        assert generator.get("options", {}).get("disableNameSuffixHash") is True, generator["name"]
        assert set(generator) <= {"name", "files", "literals", "options"}, generator
        data: dict[str, str] = {}
        for entry in generator.get("files", []):
            key, _, source = entry.rpartition("=")
            data[key or Path(source).name] = (BASE / source).read_text(encoding="utf-8")
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        objects.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}
        )
    namespace = kustomization.get("namespace")
    for obj in objects:
        if namespace and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace
    return tuple(objects)


def _kubectl() -> str | None:
    return shutil.which("kubectl")


@cache
def _kubectl_kustomize(directory: Path) -> tuple[dict[str, Any], ...]:
    kubectl = _kubectl()
    if kubectl is None:
        pytest.skip("kubectl not installed")
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def _renders() -> list[tuple[dict[str, Any], ...]]:
    """base/ as read here, and every overlay as kubectl renders it (when kubectl is installed)."""
    overlays = [_kubectl_kustomize(overlay) for overlay in OVERLAYS] if _kubectl() else []
    return [_render_base(), *overlays]


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def _one(objects: Objects, kind: str) -> dict[str, Any]:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _container(objects: Objects) -> dict[str, Any]:
    containers = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _plain_env(objects: Objects) -> dict[str, str]:
    """The container's environment with literal values (env entries and envFrom ConfigMaps)."""
    container = _container(objects)
    env: dict[str, str] = {}
    configmaps = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "ConfigMap"}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
    return env


def _env_names(objects: Objects) -> set[str]:
    container = _container(objects)
    return set(_plain_env(objects)) | {entry["name"] for entry in container.get("env", [])}


def _settings_field(env_name: str) -> str:
    return env_name.removeprefix("GATEWAY_").lower()


def _assert_settings_fields(names: set[str], where: str) -> None:
    fields = set(Settings.model_fields)
    unknown = sorted(n for n in names if n.startswith("GATEWAY_") and _settings_field(n) not in fields)
    assert not unknown, f"{where}: not settings of gateway/settings.py: {unknown}"


def _settings_from(env: dict[str, str]) -> Settings:
    """Settings as the process would read them from ``env`` (values validated, pydantic coercion)."""
    given = {_settings_field(k): v for k, v in env.items() if k.startswith("GATEWAY_")}
    return Settings.model_validate(given)


def _exported_metrics() -> set[str]:
    names: set[str] = set()
    for family in GatewayMetrics().registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


@cache
def _routes(metrics_port: int | None) -> frozenset[tuple[str, str]]:
    """(method, path) of every route the gateway's main app serves (building the app does no I/O)."""
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(
            data_dir=Path(data_dir), token_secret=SecretStr("x" * 32), metrics_port=metrics_port
        )
        app = create_app(settings, tenants=TenantRegistry([TenantConfig(name="t")]))
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        found.add((route.method, str(path)))
    return frozenset(found)


def _is_route(path: str, metrics_port: int | None = 9100) -> bool:
    return ("GET", path) in _routes(metrics_port)


# --- Kubernetes: schema ------------------------------------------------------------------------------


def test_base_lists_only_files_that_exist_and_no_secret() -> None:
    kustomization = _kustomization(BASE)
    for name in kustomization["resources"]:
        assert (BASE / name).is_file(), name
    kinds = [obj["kind"] for obj in _render_base()]
    assert "Secret" not in kinds, "no Secret is applied from the repository (README: create it)"
    assert "secret.example.yaml" not in kustomization["resources"]
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"):
        assert kind in kinds
    assert {"ServiceMonitor", "NetworkPolicy"} <= set(kinds)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_is_valid_for_kubernetes(version: str) -> None:
    objects = [obj for rendered in _renders() for obj in rendered]
    checked = 0
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(obj, version, strict=True)
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{_key(obj)} is not valid for Kubernetes {version}: {e.message} at {list(e.path)}")
        checked += 1
    assert checked >= 8


def test_kubectl_kustomize_renders_base_as_read_here() -> None:
    rendered = {_key(obj): obj for obj in _kubectl_kustomize(BASE)}
    ours = {_key(obj): obj for obj in _render_base()}
    assert rendered == ours


def test_service_monitor_scrapes_the_metrics_port_of_the_service() -> None:
    objects = _render_base()
    monitor, service = _one(objects, "ServiceMonitor"), _one(objects, "Service")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "endpoints", "jobLabel", "namespaceSelector", "targetLabels"}
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    # The alert rules select on job="memory-gateway": jobLabel names the label whose value is the job.
    assert service["metadata"]["labels"][spec["jobLabel"]] == "memory-gateway"
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert spec["endpoints"], "no endpoints"
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels"}
        assert endpoint["port"] == "metrics" and endpoint["port"] in ports
        assert endpoint.get("path", "/metrics") == "/metrics"
        assert re.fullmatch(r"\d+s", endpoint["interval"])


# --- Kubernetes: the pod against the gateway ---------------------------------------------------------


def test_probes_point_at_real_routes_on_the_http_port() -> None:
    container = _container(_render_base())
    probes = {name: container[name] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for name, probe in probes.items():
        path, port = probe["httpGet"]["path"], probe["httpGet"]["port"]
        assert _is_route(path), f"{name}: {path} is no route of gateway.routes.setup"
        assert port == "http" and port in ports, name
    # Startup may take ~10-30 s (imports, embedder, schema): the startup probe must allow well over that.
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


def test_metrics_are_only_on_the_metrics_port() -> None:
    assert _is_route("/metrics", metrics_port=None), "the main app serves /metrics without a metrics port"
    assert not _is_route("/metrics", metrics_port=9100), "with GATEWAY_METRICS_PORT it must not"


def test_ports_agree_between_env_container_service_and_policy() -> None:
    objects = _render_base()
    container = _container(objects)
    settings = _settings_from(_plain_env(objects))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (
        ports == {"http": settings.port, "metrics": settings.metrics_port} == {"http": 8765, "metrics": 9100}
    )
    assert settings.host == "0.0.0.0"
    service = _one(objects, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert (
        service["spec"]["selector"].items()
        <= _one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports and ports[port["targetPort"]] == port["port"], port
    policy = _one(objects, "NetworkPolicy")
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            assert port["port"] in ports, port


def test_grace_period_covers_prestop_drain_and_shutdown() -> None:
    for rendered in _renders():
        pod = _one(rendered, "Deployment")["spec"]["template"]["spec"]
        settings = _settings_from(_plain_env(rendered))
        pre_stop = pod["containers"][0]["lifecycle"]["preStop"]
        sleep = pre_stop["sleep"]["seconds"]
        assert sleep >= 5, "the preStop sleep must outlast load-balancer deregistration"
        budget = sleep + settings.drain_secs + settings.shutdown_grace_secs
        assert pod["terminationGracePeriodSeconds"] > budget
        # Documented budget: the shutdown grace bounds three steps (last writes, HTTP server, memory close).
        assert (
            pod["terminationGracePeriodSeconds"]
            >= sleep + settings.drain_secs + 3 * settings.shutdown_grace_secs
        )
    base_settings = _settings_from(_plain_env(_render_base()))
    assert base_settings.drain_secs == 600, "voice calls: see the comment in base/deployment.yaml"


def test_every_gateway_env_var_is_a_setting_with_a_valid_value() -> None:
    for rendered in _renders():
        _assert_settings_fields(_env_names(rendered), "deploy/k8s")
        settings = _settings_from(_plain_env(rendered))
        assert settings.public_url and settings.public_url.startswith("https://")
    for name, value in _plain_env(_render_base()).items():
        assert not SECRET_NAME.search(name), f"{name}={value!r} belongs in the Secret"


def test_secrets_come_from_the_secret_and_the_example_lists_every_key() -> None:
    container = _container(_render_base())
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert {"GATEWAY_DATABASE_URL", "GATEWAY_REDIS_URL", "GATEWAY_TOKEN_SECRET"} <= set(refs)
    example = _one(_load_all(BASE / "secret.example.yaml"), "Secret")
    assert {ref["name"] for ref in refs.values()} == {example["metadata"]["name"]}
    assert {ref["key"] for ref in refs.values()} == set(example["stringData"])
    for value in example["stringData"].values():
        assert not value or re.search(r"[A-Z]{4,}", value), f"placeholder expected, got {value!r}"
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    for ref in refs.values():
        assert f"--from-literal={ref['key']}=" in readme, ref["key"]


def test_pod_is_locked_down_and_writes_only_to_empty_dirs() -> None:
    objects = _render_base()
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    container = _container(objects)
    for context in (pod["securityContext"], container["securityContext"]):
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == IMAGE_UID
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    env = _plain_env(objects)
    settings = _settings_from(env)
    for path in (str(settings.data_dir), "/tmp", env["HOME"], env["TMPDIR"]):
        mount = next(m for p, m in mounts.items() if path == p or path.startswith(p + "/"))
        assert "emptyDir" in volumes[mount["name"]], path
    assert env["MEM0_DIR"].startswith(str(settings.data_dir) + "/")

    # The tenants file: a key of the generated ConfigMap, mounted read-only as a directory.
    tenants_file = settings.resolved_tenants_file
    mount = mounts[str(tenants_file.parent)]
    assert mount["readOnly"] is True and "subPath" not in mount, "subPath mounts never see updates"
    configmap_name = volumes[mount["name"]]["configMap"]["name"]
    configmap = next(
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == configmap_name
    )
    assert tenants_file.name in configmap["data"]


def test_example_tenants_file_is_valid_and_holds_no_key(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text((BASE / "tenants.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    registry = TenantRegistry.load(path)
    assert len(registry) >= 1
    for tenant in registry:
        for key in tenant.api_keys:
            assert set(key.removeprefix("sha256:")) == {"0"}, "only the placeholder hash is committed"


def test_hpa_scales_on_an_exported_metric_and_scales_down_slowly() -> None:
    objects = _render_base()
    hpa = _one(objects, "HorizontalPodAutoscaler")
    spec = hpa["spec"]
    deployment = _one(objects, "Deployment")
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "memory-gateway"}
    assert deployment["metadata"]["name"] == spec["scaleTargetRef"]["name"]
    assert spec["minReplicas"] >= 2 and spec["maxReplicas"] > spec["minReplicas"]
    pods = [m["pods"] for m in spec["metrics"] if m["type"] == "Pods"]
    assert len(pods) == 1 and pods[0]["target"]["type"] == "AverageValue"
    metric = pods[0]["metric"]["name"]
    assert metric == "gateway_sessions_active" and metric in _exported_metrics()
    cpu = [m["resource"] for m in spec["metrics"] if m["type"] == "Resource"]
    assert cpu and cpu[0]["name"] == "cpu" and cpu[0]["target"]["type"] == "Utilization"
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= MIN_SCALE_DOWN_STABILIZATION

    # The adapter serves exactly that name from a series the gateway exports.
    rules = yaml.safe_load(ADAPTER_VALUES.read_text(encoding="utf-8"))["rules"]["custom"]
    served = [r for r in rules if r["name"].get("as") == metric]
    assert len(served) == 1
    series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", served[0]["seriesQuery"].strip("'\""))
    assert series and series.group(0) in _exported_metrics()
    assert set(served[0]["resources"]["overrides"]) == {"namespace", "pod"}

    pdb = _one(objects, "PodDisruptionBudget")["spec"]
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable") == 1
    assert (
        pdb["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_network_policy_allows_what_the_gateway_needs() -> None:
    spec = _one(_render_base(), "NetworkPolicy")["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    egress = {(p["port"], p.get("protocol", "TCP")) for rule in spec["egress"] for p in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (5432, "TCP"), (6379, "TCP"), (443, "TCP")} <= egress
    metrics_rules = [r for r in spec["ingress"] if any(p["port"] == "metrics" for p in r["ports"])]
    assert len(metrics_rules) == 1
    sources = metrics_rules[0]["from"]
    assert sources == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


# --- Docker ------------------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in _final_stage():
        if op == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_dockerfile_is_slim_non_root_and_healthchecked() -> None:
    instructions = _dockerfile()
    for op, args in instructions:
        if op == "FROM":
            assert args.split()[0] == "python:3.11-slim", args
        assert not (op == "ADD" and re.search(r"https?://", args)), "no ADD from URLs"
        if op == "RUN":
            assert not re.search(r"apt-get install|build-essential|gcc", args), "no build tools"
            if "pip install" in args:
                assert "--no-cache-dir" in args
    final = _final_stage()
    users = [args for op, args in final if op == "USER"]
    assert users, "the image must not run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) == IMAGE_UID
    health = [args for op, args in final if op == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and _is_route("/healthz")
    assert ("STOPSIGNAL", "SIGTERM") in final
    assert any(op == "ENTRYPOINT" and "memory-gateway" in args and "serve" in args for op, args in final)


def test_dockerfile_env_exposes_and_writes_only_under_volumes() -> None:
    env = _image_env()
    _assert_settings_fields(set(env), "deploy/Dockerfile")
    settings = _settings_from(env)
    assert settings.metrics_port == 9100 and settings.port == 8765 and settings.host == "0.0.0.0"
    exposed = {int(p.split("/")[0]) for op, args in _final_stage() if op == "EXPOSE" for p in args.split()}
    assert exposed == {settings.port, settings.metrics_port}
    data = str(settings.data_dir)
    for name in ("HOME", "MEM0_DIR"):
        assert env[name] == data or env[name].startswith(data + "/"), name
    assert env["TMPDIR"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    # And the pod sets the same ports (an image default changed alone would break the probes).
    pod = _settings_from(_plain_env(_render_base()))
    assert (pod.port, pod.metrics_port) == (settings.port, settings.metrics_port)


# --- compose -----------------------------------------------------------------------------------------


@cache
def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


GATEWAYS = ("gateway-a", "gateway-b")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}")


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with defaults; ``${VAR:?msg}`` (required) as a placeholder."""

    def sub(m: re.Match[str]) -> str:
        return m.group(3) if m.group(2) == "-" else f"<{m.group(1)}>"

    return INTERPOLATION.sub(sub, value)


def _service_env(service: str) -> dict[str, str]:
    env = _compose()["services"][service].get("environment", {})
    assert isinstance(env, dict), f"{service}: use the mapping form of environment"
    return {k: str(v) for k, v in env.items()}


def _compose_settings(service: str) -> Settings:
    """A replica's settings: the image's environment, then the service's (interpolated)."""
    return _settings_from({**_image_env(), **{k: _interpolate(v) for k, v in _service_env(service).items()}})


def _published(service: str) -> dict[int, int]:
    """container port -> host port."""
    found = {}
    for port in _compose()["services"][service].get("ports", []):
        host, _, container = str(port).rpartition(":")
        found[int(container)] = int(host)
    return found


def _bind_mounts(service: str) -> dict[str, tuple[Path, bool]]:
    """target -> (source on this host, read-only) of the service's bind mounts."""
    mounts = {}
    for volume in _compose()["services"][service].get("volumes", []):
        if isinstance(volume, dict):
            if volume["type"] != "bind":
                continue
            source, target, read_only = volume["source"], volume["target"], bool(volume.get("read_only"))
        else:
            parts = volume.split(":")
            if not parts[0].startswith("."):
                continue
            source, target, read_only = parts[0], parts[1], parts[2:] == ["ro"]
        mounts[target] = ((DEPLOY / _interpolate(source)).resolve(), read_only)
    return mounts


def test_compose_has_the_services_and_volumes() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"gateway-a", "gateway-b", "postgres", "redis", "prometheus", "grafana"} <= set(services)
    assert services["postgres"]["image"] == "pgvector/pgvector:pg17"
    assert services["redis"]["image"].startswith("redis:7")
    declared = set(compose.get("volumes", {}))
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict) and volume["type"] != "volume":
                continue
            source = str(volume["source"] if isinstance(volume, dict) else volume.split(":")[0])
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} not declared"
    for name in ("postgres", "redis", "prometheus", *GATEWAYS):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_compose_gateways_share_image_secret_and_backends() -> None:
    services = _compose()["services"]
    a, b = (services[name] for name in GATEWAYS)
    assert a["image"] == b["image"] and a.get("build") == b.get("build")
    env_a, env_b = (_service_env(name) for name in GATEWAYS)
    assert env_a["GATEWAY_TOKEN_SECRET"] == env_b["GATEWAY_TOKEN_SECRET"]
    assert re.fullmatch(r"\$\{GATEWAY_TOKEN_SECRET:\?[^}]+\}", env_a["GATEWAY_TOKEN_SECRET"]), (
        "no default secret"
    )
    for name, env in zip(GATEWAYS, (env_a, env_b), strict=True):
        _assert_settings_fields(set(env), f"compose {name}")
        settings = _compose_settings(name)
        assert (
            settings.redis_url is not None and settings.redis_url.get_secret_value() == "redis://redis:6379/0"
        )
        assert settings.database_url and "@postgres:5432/" in settings.database_url
        # Each replica's wsUrl names its own published port.
        host_port = _published(name)[settings.port]
        assert settings.public_url == f"http://localhost:{host_port}", name
        assert settings.metrics_port not in _published(name), "metrics stay inside the compose network"
        depends = services[name]["depends_on"]
        assert depends == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }
        # The tenants file: an existing file, read-only, where GATEWAY_TENANTS_FILE says.
        source, read_only = _bind_mounts(name)[str(settings.resolved_tenants_file)]
        assert source.is_file() and read_only, source
        assert services[name].get("read_only") is True and "/tmp" in services[name]["tmpfs"]
        assert any(
            str(v).endswith(f":{settings.data_dir}") for v in services[name]["volumes"] if isinstance(v, str)
        )
        # Stopping waits out the drain and the shutdown steps.
        grace = _seconds(services[name]["stop_grace_period"])
        assert grace > settings.drain_secs + 3 * settings.shutdown_grace_secs, name
        assert settings.drain_secs == 30
        health = " ".join(services[name]["healthcheck"]["test"])
        path = re.search(r"127\.0\.0\.1:(\d+)(/\w+)", health)
        assert path and int(path.group(1)) == settings.port and _is_route(path.group(2))
    assert _published("gateway-a")[8765] != _published("gateway-b")[8765]


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_commits_no_secret() -> None:
    names: set[str] = set()
    for name, service in _compose()["services"].items():
        env = service.get("environment", {})
        for key, value in env.items() if isinstance(env, dict) else []:
            names.add(key)
            names.update(m.group(1) for m in INTERPOLATION.finditer(str(value)))
            if SECRET_NAME.search(key):
                # Only interpolations; a default, if any, is empty.
                literal = INTERPOLATION.sub("", str(value))
                assert not re.search(r"[^/:@.a-z0-9_-]", literal), f"{name}: {key}"
                for m in INTERPOLATION.finditer(str(value)):
                    assert m.group(2) == "?" or not m.group(3), f"{name}: {key} has a default value"
    _assert_settings_fields(names, "deploy/compose.yaml")


def test_compose_prometheus_scrapes_both_metrics_ports() -> None:
    mounts = _bind_mounts("prometheus")
    config_path, _ = mounts["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    targets = {
        target
        for job in config["scrape_configs"]
        if job["job_name"] == "memory-gateway"
        for static in job["static_configs"]
        for target in static["targets"]
    }
    ports = {name: _compose_settings(name) for name in GATEWAYS}
    assert targets == {f"{name}:{s.metrics_port}" for name, s in ports.items()}
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in config["scrape_configs"])
    # rule_files resolve beside the config, where the repository's rules are mounted.
    for rule_file in config["rule_files"]:
        source, read_only = mounts[f"/etc/prometheus/{rule_file}"]
        assert source == (DEPLOY / "prometheus" / "rules.yml").resolve() and read_only


def test_compose_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(promtool).exists():
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    config_path, _ = _bind_mounts("prometheus")["/etc/prometheus/prometheus.yml"]
    done = subprocess.run(
        [promtool, "check", "config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_grafana_provisions_the_repository_dashboards() -> None:
    services = _compose()["services"]
    mounts = _bind_mounts("grafana")
    provisioning = GRAFANA / "provisioning"
    for kind in ("datasources", "dashboards"):
        source, read_only = mounts[f"/etc/grafana/provisioning/{kind}"]
        assert source == (provisioning / kind).resolve() and source.is_dir() and read_only
    provider = yaml.safe_load((provisioning / "dashboards" / "gateway.yaml").read_text(encoding="utf-8"))
    dashboards_path = provider["providers"][0]["options"]["path"]
    source, _ = mounts[dashboards_path]
    assert source == (GRAFANA / "dashboards").resolve() and list(source.glob("*.json"))
    # The datasource's URL must reach the Prometheus service from inside the Grafana container.
    datasource = yaml.safe_load(
        (provisioning / "datasources" / "prometheus.yaml").read_text(encoding="utf-8")
    )
    url = datasource["datasources"][0]["url"]
    host = re.match(r"https?://([^:/]+)", url)
    assert host
    if host.group(1) in ("localhost", "127.0.0.1"):
        assert services["grafana"].get("network_mode") == "service:prometheus", url
    else:
        assert host.group(1) == "prometheus", url


def test_compose_matches_the_compose_spec_schema() -> None:
    """Against the compose-spec schema check-jsonschema vendors (a test dependency: offline)."""
    import json
    from importlib import resources

    import check_jsonschema
    import jsonschema

    schema_file = resources.files(check_jsonschema) / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    jsonschema.validate(_compose(), schema)


def test_app_routes_are_collected() -> None:
    """Guards the helpers above: building the app yields the routes the probes are checked against."""
    assert _is_route("/healthz") and _is_route("/readyz") and _is_route("/ws-client/{token}")
    assert ("POST", "/start") in _routes(9100)
