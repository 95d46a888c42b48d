"""The rendered manifests (`kubectl kustomize deploy/k8s`) as podman 4.3's `kube play`
can run them on one machine without a registry, GPUs or cluster DNS:

    kubectl kustomize deploy/k8s > rendered.yaml
    python deploy/k8s/podman/to_podman.py rendered.yaml KEYS.json [VLLM_UID] > play.yaml

KEYS.json holds the Secret's data ({"api-key": base64, ...}); `podman secret create
switchyard-keys KEYS.json` makes the Secret podman's env secretKeyRef reads. Each change
below is one podman or this machine cannot do as Kubernetes does; everything else
(securityContext, read-only roots, env and Secret wiring, init container, volumes,
the gateway config) is played as rendered:

- StatefulSet -> Pod `vllm-0` (kube play runs Pods, Deployments and PVCs only), its
  volumeClaimTemplate -> emptyDir; VLLM_UID (e.g. 10002) runs it as a uid the image
  has no passwd entry for, as the manifest's uid is in vLLM's own image.
- Host networking on loopback ports (bridge networks do not resolve names here):
  gateways 28000 and 28002 (the two replicas as two one-pod Deployments, each needing
  its own port), vLLM 28001, Redis 26379; addresses instead of Service names in the
  gateway config (hostAliases do not reach /etc/hosts under host networking).
- localhost/ images: Redis from Debian's package, the CPU vLLM server
  (switchyard-cpu) serving the demo model under the manifest's served model name.
- `$(REDIS_PASSWORD)` in Redis's args expanded here (the kubelet does it; podman 4.3
  does not).
- No GPU resources; vLLM on CPU (--enforce-eager, 1 GiB KV cache, a local model).
"""

from __future__ import annotations

import base64
import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]
MODELS = Path(__file__).resolve().parents[3] / "models"  # `make model`
PORTS = {"gateway": 28000, "gateway-b": 28002, "vllm": 28001, "redis": 26379}


def without_port_mappings(pod: Doc) -> None:
    """Host networking takes no port list: probes name their ports by number."""
    for c in pod["containers"]:
        named = {p["name"]: p["containerPort"] for p in c.pop("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            for how in ("httpGet", "tcpSocket"):
                action = c.get(probe, {}).get(how)
                if action and action["port"] in named:
                    action["port"] = named[action["port"]]


def redis(d: Doc, password: str) -> Doc:
    c = d["spec"]["template"]["spec"]["containers"][0]
    c["image"] = "localhost/switchyard-redis:7.0"
    port = str(PORTS["redis"])
    c["args"] = [password if a == "$(REDIS_PASSWORD)" else a for a in c["args"]]
    c["args"] += ["--port", port, "--bind", "127.0.0.1"]
    c["ports"] = [{"name": "redis", "containerPort": PORTS["redis"]}]
    c["readinessProbe"]["exec"]["command"] += ["-p", port]
    return d


def gateways(d: Doc) -> list[Doc]:
    d["spec"]["replicas"] = 1
    pod = d["spec"]["template"]["spec"]
    for c in pod["containers"] + pod.get("initContainers", []):
        c["image"] = "localhost/" + c["image"]
    replicas = []
    for name in ("gateway", "gateway-b"):
        replica = copy.deepcopy(d)
        replica["metadata"]["name"] = name
        c = replica["spec"]["template"]["spec"]["containers"][0]
        c["env"].append({"name": "SWITCHYARD_PORT", "value": str(PORTS[name])})
        c["ports"] = [{"name": "http", "containerPort": PORTS[name]}]
        replicas.append(replica)
    return replicas


def vllm(d: Doc, uid: int | None) -> Doc:
    template = d["spec"]["template"]
    pod = template["spec"]
    pod["hostname"] = "vllm-0"
    c = pod["containers"][0]
    c["image"] = "localhost/switchyard-cpu:0.1.0"
    c["command"] = ["tini", "--", "python", "-m", "vllm.entrypoints.openai.api_server"]
    keep = ("--served-model-name=", "--max-num-seqs=", "--enable-lora", "--max-loras=")
    c["args"] = [a for a in c["args"] if a.startswith(keep)] + [
        "--model=/models/smollm2-135m-instruct",
        "--max-model-len=2048",
        "--max-lora-rank=16",
        "--enforce-eager",
        "--host=127.0.0.1",
        f"--port={PORTS['vllm']}",
    ]
    c["env"] += [
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"},
    ]
    c["ports"] = [{"name": "http", "containerPort": PORTS["vllm"]}]
    c["resources"] = {"limits": {"memory": "8Gi"}}
    c["volumeMounts"].append({"name": "models", "mountPath": "/models", "readOnly": True})
    pod["volumes"] += [
        {"name": "cache", "emptyDir": {}},
        {"name": "models", "hostPath": {"path": str(MODELS), "type": "Directory"}},
    ]
    if uid is not None:
        pod["securityContext"]["runAsUser"] = uid
    metadata = {"name": "vllm-0", "labels": template["metadata"]["labels"]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod}


def main(rendered: str, keys: str, uid: int | None) -> list[Doc]:
    with open(keys) as f:
        secret = {k: base64.b64decode(v).decode() for k, v in json.load(f).items()}
    with open(rendered) as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    out: list[Doc] = []
    for d in documents:
        kind, name = d["kind"], d["metadata"]["name"]
        if kind == "ConfigMap":
            text = d["data"]["switchyard.yaml"]
            text = text.replace("redis://redis:6379/", f"redis://127.0.0.1:{PORTS['redis']}/")
            text = text.replace("vllm-0.vllm:8000", f"127.0.0.1:{PORTS['vllm']}")
            d["data"]["switchyard.yaml"] = text.replace(".vllm:8000", f".vllm:{PORTS['vllm']}")
            out.append(d)
        elif kind == "PersistentVolumeClaim":
            out.append(d)
        elif (kind, name) == ("Deployment", "redis"):
            out.append(redis(d, secret["redis-password"]))
        elif (kind, name) == ("Deployment", "gateway"):
            out += gateways(d)
        elif kind == "StatefulSet":
            out.append(vllm(d, uid))
    for d in out:
        pod = d["spec"] if d["kind"] == "Pod" else d.get("spec", {}).get("template", {}).get("spec")
        if pod is not None:
            pod["hostNetwork"] = True
            without_port_mappings(pod)
    return out


if __name__ == "__main__":
    uid = int(sys.argv[3]) if len(sys.argv) > 3 else None
    yaml.safe_dump_all(main(sys.argv[1], sys.argv[2], uid), sys.stdout, sort_keys=False)
