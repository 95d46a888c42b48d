"""The Kubernetes manifests, checked here without a cluster: `kubectl kustomize
deploy/k8s` rendered alone and with its components, validated against Kubernetes' own
schemas, and their parts fitting together: NetworkPolicies evaluated pod to pod, the
PodDisruptionBudgets' selectors, the Secret's keys against the README's step, the vLLM
key and the Redis password reaching both ends, the gateway config (through the real
settings loader) naming every vLLM pod there can be, probes, grace and caps."""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import Settings, load_settings
from tests.deploy import shutdown_timeout_s

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES = "1.32.0"
NAMESPACE = "switchyard"
SECRET = "switchyard-keys"
COMPONENTS = ("servicemonitor", "keda", "gpu-operator")
COMBINATIONS = [
    combo for n in range(len(COMPONENTS) + 1) for combo in itertools.combinations(COMPONENTS, n)
]
CRDS = {"monitoring.coreos.com/v1": {"ServiceMonitor"}, "keda.sh/v1alpha1": {"ScaledObject"}}

Doc = dict[str, Any]


@cache
def render(components: tuple[str, ...] = ()) -> tuple[Doc, ...]:
    """`kubectl kustomize deploy/k8s`, or a kustomization adding `components` to it
    (as an operator's own overlay would)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is missing: `make test` installs it (scripts/system-deps.sh).")
    target = K8S
    scratch = None
    if components:
        scratch = Path(tempfile.mkdtemp(prefix="k8s-overlay-"))
        base = os.path.relpath(K8S, scratch)  # kustomize takes relative paths only
        overlay = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [base],
            "components": [f"{base}/components/{c}" for c in components],
        }
        (scratch / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
        target = scratch
    try:
        out = subprocess.run(
            [kubectl, "kustomize", str(target)], capture_output=True, text=True, check=True
        ).stdout
    finally:
        if scratch is not None:
            shutil.rmtree(scratch)
    return tuple(d for d in yaml.safe_load_all(out) if d)


def one(documents: tuple[Doc, ...], kind: str, name: str) -> Doc:
    [found] = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def of_kind(documents: tuple[Doc, ...], kind: str) -> list[Doc]:
    return [d for d in documents if d["kind"] == kind]


def container(workload: Doc, name: str) -> Doc:
    spec = workload["spec"]["template"]["spec"]
    [found] = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    return dict(found)


def env(c: Doc) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def secret_key(c: Doc, variable: str) -> str:
    """The key of switchyard-keys that `variable` of container `c` holds."""
    ref = env(c)[variable]["secretKeyRef"]
    assert ref["name"] == SECRET, (c["name"], variable)
    key: str = ref["key"]
    return key


def k8s_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for variable in ("SWITCHYARD_API_KEY", "SWITCHYARD_ADMIN_KEY"):
        monkeypatch.setenv(variable, "sk-test")
    return load_settings(K8S / "gateway-config.yaml")


# -- rendering and schemas ----------------------------------------------------------


@pytest.mark.parametrize("components", COMBINATIONS, ids=lambda c: "+".join(c) or "base")
def test_k8s_renders_and_validates_against_kubernetes_schemas(
    components: tuple[str, ...],
) -> None:
    """Every object of every combination against Kubernetes 1.32 (strict: an unknown
    field fails); the CRDs' objects (ServiceMonitor, ScaledObject) only with their
    component, so the base applies on a cluster without those CRDs."""
    import kubernetes_validate  # type: ignore[import-untyped]

    documents = render(components)
    for document in documents:
        kinds = CRDS.get(document["apiVersion"])
        if kinds is not None:
            assert document["kind"] in kinds
            continue  # checked in test_k8s_custom_resources_fit_their_targets
        kubernetes_validate.validate(document, KUBERNETES, strict=True)
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == NAMESPACE, document["metadata"]
    custom = {d["kind"] for d in documents if d["apiVersion"] in CRDS}
    assert custom == {
        {"servicemonitor": "ServiceMonitor", "keda": "ScaledObject"}[c]
        for c in components
        if c != "gpu-operator"
    }
    assert "HorizontalPodAutoscaler" not in {d["kind"] for d in documents}
    deployment = one(documents, "Deployment", "gateway")
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)
    unknown = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, KUBERNETES, strict=True)


def test_k8s_custom_resources_fit_their_targets() -> None:
    """The ServiceMonitor selects the gateway's and vLLM's Services by a port they have;
    the ScaledObject scales the vLLM StatefulSet, whose replica count KEDA then owns,
    on vLLM's queue among others, within the engines the gateway config lists."""
    documents = render(COMPONENTS)
    monitor = one(documents, "ServiceMonitor", "switchyard")
    [expression] = monitor["spec"]["selector"]["matchExpressions"]
    assert expression["key"] == "app.kubernetes.io/name"
    assert expression["operator"] == "In"
    services = {
        s["metadata"]["labels"]["app.kubernetes.io/name"]: s
        for s in of_kind(documents, "Service")
        if s["metadata"]["labels"]["app.kubernetes.io/name"] in expression["values"]
    }
    assert set(services) == set(expression["values"]) == {"gateway", "vllm"}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        for service in services.values():
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}

    scaled = one(documents, "ScaledObject", "vllm")
    target = scaled["spec"]["scaleTargetRef"]
    statefulset = one(documents, "StatefulSet", target["name"])
    assert (target["apiVersion"], target["kind"]) == (statefulset["apiVersion"], "StatefulSet")
    assert "replicas" not in statefulset["spec"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    queries = [t["metadata"]["query"] for t in scaled["spec"]["triggers"]]
    assert all(t["type"] == "prometheus" for t in scaled["spec"]["triggers"])
    assert any("vllm:num_requests_waiting" in q for q in queries)
    assert all(f'namespace="{NAMESPACE}"' in q for q in queries)
    assert all(float(t["metadata"]["threshold"]) > 0 for t in scaled["spec"]["triggers"])


# -- the gateway config and the pods it names ----------------------------------------


def test_k8s_gateway_config_names_every_vllm_pod_there_can_be(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One engine per pod the StatefulSet has or KEDA may make (vllm-N.vllm, the
    headless Service's names), each sending the key vLLM asks for."""
    settings = k8s_settings(monkeypatch)
    base, scaled = render(), render(("keda",))
    statefulset = one(base, "StatefulSet", "vllm")
    service = one(base, "Service", statefulset["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    most = max(
        statefulset["spec"]["replicas"],
        one(scaled, "ScaledObject", "vllm")["spec"]["maxReplicaCount"],
    )
    port = service["spec"]["ports"][0]["port"]
    urls = {e.options["url"] for e in settings.engines}
    assert urls == {f"http://vllm-{i}.{service['metadata']['name']}:{port}" for i in range(most)}

    vllm = container(statefulset, "vllm")
    gateway = container(one(base, "Deployment", "gateway"), "gateway")
    key = secret_key(vllm, "VLLM_API_KEY")  # vLLM's --api-key, from its environment
    assert not any(a.startswith("--api-key") for a in vllm["args"])  # not in argv
    for engine in settings.engines:
        assert engine.kind == "openai_remote"
        assert secret_key(gateway, engine.options["api_key_env"]) == key
        assert engine.options["upstream_model"] in {
            a.split("=", 1)[1] for a in vllm["args"] if a.startswith("--served-model-name=")
        }


def test_k8s_redis_password_reaches_redis_and_every_redis_section(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = k8s_settings(monkeypatch)
    documents = render()
    redis = container(one(documents, "Deployment", "redis"), "redis")
    args = redis["args"]
    variable = re.fullmatch(r"\$\((\w+)\)", args[args.index("--requirepass") + 1])
    assert variable is not None
    key = secret_key(redis, variable[1])
    assert secret_key(redis, "REDISCLI_AUTH") == key  # the probe's redis-cli
    assert args[args.index("--maxmemory-policy") + 1] == "volatile-lru"
    gateway = container(one(documents, "Deployment", "gateway"), "gateway")
    service = one(documents, "Service", "redis")
    sections = {
        "cache": (settings.cache.backend, settings.cache),
        "rate_limit": (settings.auth.rate_limit.backend, settings.auth.rate_limit),
        "responses": (settings.responses.backend, settings.responses),
        "adapter_registry": (settings.adapter_registry.backend, settings.adapter_registry),
    }
    databases = set()
    for name, (backend, section) in sections.items():
        assert backend == "redis", name
        assert section.password_env is not None, name
        assert secret_key(gateway, section.password_env) == key, name
        url = re.fullmatch(r"redis://([\w.-]+):(\d+)/(\d+)", section.redis_url)
        assert url is not None, name
        assert url[1] == service["metadata"]["name"], name
        assert int(url[2]) == service["spec"]["ports"][0]["port"], name
        databases.add(url[3])
    assert len(databases) == len(sections)


def test_k8s_every_secret_key_is_created_by_the_readme() -> None:
    """The keys the pods read are the ones README step 4 creates (an optional one may
    be left out), after the namespace exists and before `kubectl apply -k`."""
    readme = (K8S / "README.md").read_text()
    create = readme.index(f"create secret generic {SECRET}")
    assert readme.index("kubectl apply -f deploy/k8s/namespace.yaml") < create
    assert create < readme.index("kubectl apply -k deploy/k8s")
    block = readme[create : readme.index("```", create)].splitlines()
    command = "\n".join(line for line in block if not line.lstrip().startswith("#"))
    created = set(re.findall(r"--from-literal=([\w-]+)=", command))
    required: set[str] = set()
    optional: set[str] = set()
    for workload in (*of_kind(render(), "Deployment"), *of_kind(render(), "StatefulSet")):
        spec = workload["spec"]["template"]["spec"]
        for c in spec["containers"] + spec.get("initContainers", []):
            for value in env(c).values():
                if isinstance(value, dict) and "secretKeyRef" in value:
                    ref = value["secretKeyRef"]
                    assert ref["name"] == SECRET
                    (optional if ref.get("optional") else required).add(ref["key"])
    assert required == created
    assert optional - created == {"hf-token"}
    assert "switchyard hash-key" not in command  # no Switchyard needed on the host


# -- workloads ------------------------------------------------------------------------


def test_k8s_gateway_drains_probes_and_admits_what_vllm_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = k8s_settings(monkeypatch)
    documents = render()
    deployment = one(documents, "Deployment", "gateway")
    pod = deployment["spec"]["template"]["spec"]
    gateway = container(deployment, "gateway")
    assert gateway["image"] == "switchyard-gateway-slim:0.1.0"
    assert (ROOT / "deploy" / "docker" / "Dockerfile.slim").is_file()
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/health"
    pre_stop = gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + settings.shutdown_grace_s
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 2

    config_map = one(documents, "ConfigMap", pod["volumes"][0]["configMap"]["name"])
    assert yaml.safe_load(config_map["data"]["switchyard.yaml"]) == yaml.safe_load(
        (K8S / "gateway-config.yaml").read_text()
    )
    mount = next(m for m in gateway["volumeMounts"] if m["name"] == pod["volumes"][0]["name"])
    assert gateway["args"][-1] == f"{mount['mountPath']}/switchyard.yaml"

    vllm = container(one(documents, "StatefulSet", "vllm"), "vllm")
    [max_num_seqs] = [int(a.split("=")[1]) for a in vllm["args"] if a.startswith("--max-num-seqs=")]
    for engine in settings.engines:
        assert engine.max_in_flight is not None
        assert replicas * engine.max_in_flight <= max_num_seqs, engine.name


def test_k8s_vllm_pods_run_as_a_user_with_a_home() -> None:
    """No passwd entry for the uid in vLLM's image: USER/LOGNAME for getpass.getuser(),
    HOME and every cache directory on a writable volume under a read-only root."""
    documents = render()
    statefulset = one(documents, "StatefulSet", "vllm")
    pod = statefulset["spec"]["template"]["spec"]
    vllm = container(statefulset, "vllm")
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    variables = env(vllm)
    assert variables["USER"] == variables["LOGNAME"]
    assert vllm["securityContext"]["readOnlyRootFilesystem"] is True
    writable = {m["mountPath"] for m in vllm["volumeMounts"] if not m.get("readOnly")}
    for variable in ("HOME", "XDG_CACHE_HOME", "HF_HOME", "TRITON_CACHE_DIR", "TMPDIR"):
        path = Path(variables[variable])
        assert any(path == Path(w) or Path(w) in path.parents for w in writable), variable
    assert variables["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "VLLM_API_KEY" in variables


def test_k8s_adapters_volume_is_shared_and_writable_by_the_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = k8s_settings(monkeypatch)
    documents = render()
    claim = one(documents, "PersistentVolumeClaim", "switchyard-adapters")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"]
    gateway = one(documents, "Deployment", "gateway")
    vllm = one(documents, "StatefulSet", "vllm")

    def mount(workload: Doc, name: str) -> Doc:
        [volume] = [
            v["name"]
            for v in workload["spec"]["template"]["spec"]["volumes"]
            if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]
        ]
        [found] = [m for m in container(workload, name)["volumeMounts"] if m["name"] == volume]
        return dict(found)

    path = mount(gateway, "gateway")["mountPath"]
    assert not mount(gateway, "gateway").get("readOnly")
    assert mount(vllm, "vllm") == {**mount(vllm, "vllm"), "mountPath": path, "readOnly": True}
    assert {str(e.adapter_root) for e in settings.engines} == {path}
    # The init container gives the volume to the uid both run as.
    uid = gateway["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert vllm["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid
    owner = container(gateway, "adapters-owner")
    assert mount(gateway, "adapters-owner")["mountPath"] == path
    assert f"chown {uid}:{uid} {path}" in owner["command"][-1]
    assert set(owner["securityContext"]["capabilities"]["add"]) == {"CHOWN", "FOWNER"}


def test_k8s_disruption_budgets_select_their_pods() -> None:
    documents = render()
    budgets = {b["metadata"]["name"]: b for b in of_kind(documents, "PodDisruptionBudget")}
    for workload in (
        one(documents, "Deployment", "gateway"),
        one(documents, "StatefulSet", "vllm"),
    ):
        budget = budgets[workload["metadata"]["name"]]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selects(budget["spec"]["selector"], labels)
    assert budgets["vllm"]["spec"]["maxUnavailable"] == 1


def test_k8s_vllm_placement_is_a_parameter() -> None:
    base = one(render(), "StatefulSet", "vllm")["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in base[
        "tolerations"
    ]
    assert "runtimeClassName" not in base
    operator = one(render(("gpu-operator",)), "StatefulSet", "vllm")["spec"]["template"]["spec"]
    assert operator["runtimeClassName"] == "nvidia"
    assert operator["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert operator["tolerations"] == base["tolerations"]


# -- NetworkPolicies, evaluated ------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str]
    ports: dict[str, int]  # by name
    address: str = "10.1.2.3"  # pods' addresses are private


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        present = expression["key"] in labels
        value = labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: Doc, pod: Pod, policy_namespace: str, namespaces: dict[str, Doc]) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        address = ipaddress.ip_address(pod.address)
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if "namespaceSelector" in peer:
        labels = namespaces.get(pod.namespace, {})
        if not selects(peer["namespaceSelector"], labels):
            return False
    elif pod.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector", {}), pod.labels)


def _port_matches(rule: Doc, target: Pod, port: int) -> bool:
    if "ports" not in rule:
        return True
    for allowed in rule["ports"]:
        number = allowed.get("port")
        if number is None or target.ports.get(number, number) == port:
            return True
    return False


def allowed(
    policies: list[Doc], source: Pod, target: Pod, port: int, namespaces: dict[str, Doc]
) -> bool:
    """Whether `source` may open TCP `port` on `target` under `policies` (Kubernetes'
    semantics: a pod selected by a policy of a direction allows only what one of them
    lets through; with no such policy, everything)."""

    def direction(pod: Pod, kind: str) -> Iterator[tuple[Doc, str]]:
        for p in policies:
            spec, namespace = p["spec"], p["metadata"]["namespace"]
            applies = namespace == pod.namespace and kind in spec["policyTypes"]
            if applies and selects(spec["podSelector"], pod.labels):
                yield p, namespace

    ingress = list(direction(target, "Ingress"))
    if ingress and not any(
        _port_matches(rule, target, port)
        and (
            "from" not in rule
            or any(_peer_matches(f, source, ns, namespaces) for f in rule["from"])
        )
        for p, ns in ingress
        for rule in p["spec"].get("ingress", [])
    ):
        return False
    egress = list(direction(source, "Egress"))
    return not egress or any(
        _port_matches(rule, target, port)
        and ("to" not in rule or any(_peer_matches(t, target, ns, namespaces) for t in rule["to"]))
        for p, ns in egress
        for rule in p["spec"].get("egress", [])
    )


def _pods(documents: tuple[Doc, ...]) -> dict[str, Pod]:
    pods = {}
    for workload in (*of_kind(documents, "Deployment"), *of_kind(documents, "StatefulSet")):
        template = workload["spec"]["template"]
        ports = {
            p["name"]: p["containerPort"]
            for c in template["spec"]["containers"]
            for p in c.get("ports", [])
        }
        pods[workload["metadata"]["name"]] = Pod(NAMESPACE, template["metadata"]["labels"], ports)
    return pods


@pytest.mark.parametrize("components", [(), ("servicemonitor",)], ids=["base", "servicemonitor"])
def test_k8s_network_policies_let_only_the_gateway_reach_vllm_and_redis(
    components: tuple[str, ...],
) -> None:
    documents = render(components)
    policies = of_kind(documents, "NetworkPolicy")
    pods = _pods(documents)
    namespaces = {
        NAMESPACE: {"kubernetes.io/metadata.name": NAMESPACE},
        "monitoring": {"kubernetes.io/metadata.name": "monitoring"},
        "ingress-nginx": {"kubernetes.io/metadata.name": "ingress-nginx"},
        "default": {"kubernetes.io/metadata.name": "default"},
    }
    for policy in policies:  # every policy selects pods that exist
        assert any(selects(policy["spec"]["podSelector"], p.labels) for p in pods.values())
    gateway, vllm, redis = pods["gateway"], pods["vllm"], pods["redis"]
    stranger = Pod(NAMESPACE, {"app": "debug"}, {})
    # Another namespace's pod, even one labelled as a gateway: no egress policy holds it.
    outsider = Pod("default", {"app.kubernetes.io/name": "gateway"}, {})
    ingress = Pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}, {})
    prometheus = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"}, {})
    hub = Pod("internet", {}, {}, address="18.239.50.1")
    metadata = Pod("cloud", {}, {}, address="169.254.169.254")
    dns = Pod("kube-system", {"k8s-app": "kube-dns"}, {})
    port = {name: pod.ports for name, pod in pods.items()}

    def ok(source: Pod, target: Pod, number: int) -> bool:
        return allowed(policies, source, target, number, namespaces)

    assert ok(gateway, vllm, port["vllm"]["http"])
    assert ok(gateway, redis, port["redis"]["redis"])
    assert ok(gateway, dns, 53)
    assert ok(vllm, dns, 53)
    assert ok(vllm, hub, 443)
    assert ok(ingress, gateway, port["gateway"]["http"])
    assert ok(prometheus, gateway, port["gateway"]["http"])
    for source in (stranger, outsider, ingress, prometheus, redis, vllm):
        assert not ok(source, redis, port["redis"]["redis"]), source
    for source in (stranger, outsider, ingress, redis):
        assert not ok(source, vllm, port["vllm"]["http"]), source
    assert not ok(vllm, redis, port["redis"]["redis"])
    assert not ok(vllm, metadata, 80)
    assert not ok(vllm, metadata, 443)
    assert not ok(redis, hub, 443)
    assert not ok(gateway, hub, 443)
    assert ok(prometheus, vllm, port["vllm"]["http"]) == ("servicemonitor" in components)


def test_k8s_vllm_finishes_its_streams_when_stopped() -> None:
    """A rolling update's SIGTERM: vLLM drains for --shutdown-timeout, within the pod's
    grace period (tests/deploy/test_deploy.py says why)."""
    statefulset = one(render(), "StatefulSet", "vllm")
    drain = shutdown_timeout_s(container(statefulset, "vllm")["args"])
    assert 0 < drain < statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
