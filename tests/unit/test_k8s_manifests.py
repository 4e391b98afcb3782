"""deploy/k8s, rendered offline the way `kubectl kustomize` does, then checked against schemas and the code.

No cluster and no kustomize binary: a small renderer below loads a kustomization's resources, applies its
components, its patches (strategic merge of the few fields the patches touch, or JSON 6902 operations),
its images and its namespace (checked by hand to print the same objects as `kubectl kustomize` 1.32 for every
overlay, with and without the SASL component). Each rendered object is validated with the Kubernetes JSON schemas that the
`kubernetes-validate` package ships (strict: unknown fields fail) or, for KEDA's kinds, with the minimal
hand-written schemas in deploy/k8s/schemas/. Then the manifests are checked against the product itself:
the LINEWATCH_* names exist in Settings, the probes hit /health on the metrics port, the commands exist in
the CLI, KEDA watches the worker's real consumer group and topics, and nothing references what is not there.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml
from pydantic import BaseModel

from stream_app.cli import app
from stream_app.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = K8S / "schemas"
K8S_VERSION = "1.30"  # the oldest Kubernetes the manifests target
EXTERNAL_SECRETS = {"linewatch-redis", "linewatch-kafka"}  # created by the operator, never in the manifests
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}

Obj = dict[str, Any]


# ------------------------------------------------------------------ a small kustomize


def load_docs(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(directory: Path, extra_components: tuple[Path, ...] = ()) -> list[Obj]:
    """The objects `kubectl kustomize directory` prints (for the features these manifests use)."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objs: list[Obj] = []
    for res in kust.get("resources", []):
        path = directory / res
        objs += render(path) if path.is_dir() else load_docs(path)
    for comp in [*(directory / c for c in kust.get("components", [])), *extra_components]:
        comp_kust = yaml.safe_load((comp / "kustomization.yaml").read_text())
        assert comp_kust["kind"] == "Component", f"{comp} is not a kustomize Component"
        objs += [doc for res in comp_kust.get("resources", []) for doc in load_docs(comp / res)]
        objs = transform(objs, comp_kust, comp)
    return transform(objs, kust, directory)


def transform(objs: list[Obj], kust: Obj, directory: Path) -> list[Obj]:
    """Patches, then images, then the namespace, as kustomize orders its built-in transformers."""
    objs = copy.deepcopy(objs)
    for entry in kust.get("patches", []):
        patch = yaml.safe_load((directory / entry["path"]).read_text())
        if isinstance(patch, list):  # JSON 6902 operations: the target must be named
            targets = [o for o in objs if matches(o, entry["target"])]
            assert targets, f"patch {entry['path']} matches nothing"
            for obj in targets:
                for op in patch:
                    json6902(obj, op)
        else:  # strategic merge: the target is the patch's own kind and name unless one is given
            target = entry.get("target") or {"kind": patch["kind"], "name": patch["metadata"]["name"]}
            targets = [o for o in objs if matches(o, target)]
            assert targets, f"patch {entry['path']} matches nothing"
            for obj in targets:
                strategic_merge(obj, patch)
    for image in kust.get("images", []):
        for container in containers(objs):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag or 'latest')}"
    if namespace := kust.get("namespace"):
        for obj in objs:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
    return objs


def matches(obj: Obj, target: Obj) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    wanted = {"group": group, "version": version, "kind": obj["kind"], "name": obj["metadata"]["name"]}
    if any(k in target and target[k] != v for k, v in wanted.items()):
        return False
    labels = obj["metadata"].get("labels", {})
    selector = target.get("labelSelector", "")
    return all(labels.get(k) == v for k, v in (pair.split("=", 1) for pair in selector.split(",") if pair))


def strategic_merge(base: Obj, patch: Obj) -> None:
    """Maps merge key by key; lists of named maps (containers, env, volumes) merge by name, new entries first
    (as kustomize prints them); any other list or value replaces.

    >>> b = {"env": [{"name": "A", "value": "1"}], "args": ["x"]}
    >>> strategic_merge(b, {"env": [{"name": "B", "value": "2"}, {"name": "A", "value": "3"}], "args": ["y"]})
    >>> b
    {'env': [{'name': 'B', 'value': '2'}, {'name': 'A', 'value': '3'}], 'args': ['y']}
    """
    for key, value in patch.items():
        old = base.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            strategic_merge(old, value)
        elif isinstance(old, list) and isinstance(value, list) and all(named(x) for x in old + value):
            by_name = {item["name"]: item for item in old}
            new = []
            for item in value:
                if item["name"] in by_name:
                    strategic_merge(by_name[item["name"]], item)
                else:
                    new.append(copy.deepcopy(item))
            base[key] = new + old
        else:
            base[key] = copy.deepcopy(value)


def named(item: object) -> bool:
    return isinstance(item, dict) and "name" in item


def json6902(obj: Obj, op: Obj) -> None:
    """`add`, `replace` and `remove` at a JSON pointer (`-` appends to a list).

    >>> o = {"a": [1]}
    >>> json6902(o, {"op": "add", "path": "/a/-", "value": 2}); json6902(o, {"op": "replace", "path": "/a/0", "value": 0})
    >>> o
    {'a': [0, 2]}
    """
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    node: Any = obj
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if op["op"] == "add":
            node.insert(index, copy.deepcopy(op["value"]))
        elif op["op"] == "replace":
            node[index] = copy.deepcopy(op["value"])
        else:
            assert op["op"] == "remove", op
            del node[index]
    else:
        assert op["op"] in ("add", "replace", "remove"), op
        assert op["op"] == "add" or last in node, f"{op['op']} {op['path']}: no such field"
        if op["op"] == "remove":
            del node[last]
        else:
            node[last] = copy.deepcopy(op["value"])


# ------------------------------------------------------------------ what the checks walk


def containers(objs: list[Obj]) -> Iterator[Obj]:
    for obj in objs:
        yield from pod_spec(obj).get("containers", []) if pod_spec(obj) else ()


def pod_spec(obj: Obj) -> Obj | None:
    return obj["spec"]["template"]["spec"] if obj["kind"] in ("Deployment", "StatefulSet", "Job") else None


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(objs: list[Obj], deployment: str) -> Obj:
    spec = pod_spec(one(objs, "Deployment", deployment))
    assert spec is not None and len(spec["containers"]) == 1
    return spec["containers"][0]


OVERLAYS = {
    "cpu": (K8S / "overlays" / "cpu", ()),
    "gpu": (K8S / "overlays" / "gpu", ()),
    "cpu+kafka-sasl": (K8S / "overlays" / "cpu", (K8S / "components" / "kafka-sasl",)),
    "gpu+kafka-sasl": (K8S / "overlays" / "gpu", (K8S / "components" / "kafka-sasl",)),
}


@pytest.fixture(params=list(OVERLAYS), scope="module")
def rendered(request) -> list[Obj]:
    directory, components = OVERLAYS[request.param]
    return render(directory, components)


def effective_settings(objs: list[Obj], deployment: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """The Settings a container of `deployment` builds: its ConfigMap file, then its plain environment values."""
    c = container(objs, deployment)
    env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    config_path = Path(env.pop("LINEWATCH_CONFIG"))
    mount = next(m for m in c["volumeMounts"] if Path(m["mountPath"]) == config_path.parent)
    volume = next(v for v in pod_spec(one(objs, "Deployment", deployment))["volumes"] if v["name"] == mount["name"])
    data = one(objs, "ConfigMap", volume["configMap"]["name"])["data"]
    assert config_path.name in data, f"LINEWATCH_CONFIG names {config_path.name}, the ConfigMap has {list(data)}"
    local = tmp_path / config_path.name
    local.write_text(data[config_path.name])
    for name in [n for n in os.environ if n.startswith("LINEWATCH_") or n in ("KAFKA_BOOTSTRAP", "REDIS_URL")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(local)


# ------------------------------------------------------------------ schemas


def test_every_object_validates_against_its_schema(rendered):
    keda = {
        path.name.split("_", 1)[1].split(".")[0]: json.loads(path.read_text())
        for path in SCHEMAS.glob("keda.sh_*.json")
    }
    kinds = {"ScaledObject": keda["scaledobjects"], "TriggerAuthentication": keda["triggerauthentications"]}
    for obj in rendered:
        if obj["apiVersion"].startswith("keda.sh/"):
            jsonschema.Draft202012Validator(kinds[obj["kind"]]).validate(obj)
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_kafka_triggers_follow_kedas_kafka_scaler(rendered):
    schema = json.loads((SCHEMAS / "keda-kafka-trigger-metadata.json").read_text())
    triggers = one(rendered, "ScaledObject", "linewatch-worker")["spec"]["triggers"]
    assert triggers and all(t["type"] == "kafka" for t in triggers)
    for trigger in triggers:
        jsonschema.Draft202012Validator(schema).validate(trigger["metadata"])


def test_the_renderer_agrees_with_kustomize_on_the_overlays_shape():
    """What `kubectl kustomize deploy/k8s/overlays/gpu` printed when these manifests were written."""
    objs = render(K8S / "overlays" / "gpu")
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objs) == [
        ("ConfigMap", "linewatch-config"),
        ("Deployment", "linewatch-retrain"),
        ("Deployment", "linewatch-worker"),
        ("PersistentVolumeClaim", "linewatch-frames"),
        ("PersistentVolumeClaim", "linewatch-registry"),
        ("PodDisruptionBudget", "linewatch-worker"),
        ("ScaledObject", "linewatch-worker"),
        ("Service", "linewatch-worker-metrics"),
        ("ServiceAccount", "linewatch"),
    ]
    assert {o["metadata"]["namespace"] for o in objs} == {"linewatch"}
    assert [e["name"] for e in container(objs, "linewatch-worker")["env"]][:4] == [
        "LINEWATCH_DEVICE",
        "LINEWATCH_METRICS_HOST",
        "LINEWATCH_WORKER_PROCESSES",
        "LINEWATCH_CONFIG",
    ]


# ------------------------------------------------------------------ the manifests against the product


def settings_path(env_name: str) -> list[str] | None:
    """The Settings field path a LINEWATCH_* variable sets (prefix and `__` as in Settings.model_config)."""
    prefix, delimiter = Settings.model_config["env_prefix"], Settings.model_config["env_nested_delimiter"]
    parts = env_name.removeprefix(prefix).lower().split(delimiter)
    model: type[BaseModel] | None = Settings
    for part in parts:
        if model is None or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return parts


def test_every_linewatch_env_name_is_a_setting(rendered):
    names = {e["name"] for c in containers(rendered) for e in c.get("env", [])}
    lw = sorted(n for n in names if n.startswith("LINEWATCH_") and n != "LINEWATCH_CONFIG")  # load_settings' own
    assert lw, "no LINEWATCH_* variables found"
    unknown = [n for n in lw if settings_path(n) is None]
    assert not unknown, f"not fields of Settings (ignored silently at run time): {unknown}"


def test_every_setting_source_loads(rendered, monkeypatch, tmp_path):
    for deployment in ("linewatch-worker", "linewatch-retrain"):
        settings = effective_settings(rendered, deployment, monkeypatch, tmp_path)
        assert settings.registry_dir == Path("/data/registry")
        mounts = {m["mountPath"]: m for m in container(rendered, deployment)["volumeMounts"]}
        for path in (settings.registry_dir, settings.state_dir, *settings.claim_check_dirs):
            assert str(path) in mounts, f"{deployment}: {path} is not a mounted volume"
        assert mounts[str(settings.registry_dir)].get("readOnly", False) is (deployment == "linewatch-worker")


def test_probes_hit_health_on_the_metrics_port(rendered, monkeypatch, tmp_path):
    settings = effective_settings(rendered, "linewatch-worker", monkeypatch, tmp_path)
    c = container(rendered, "linewatch-worker")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/health", probe
        assert ports.get(get["port"], get["port"]) == settings.metrics_port, probe
    service = one(rendered, "Service", "linewatch-worker-metrics")
    assert [ports[p["targetPort"]] for p in service["spec"]["ports"]] == [settings.metrics_port]


def test_keda_scales_the_workers_consumer_group_on_its_topics(rendered, monkeypatch, tmp_path):
    settings = effective_settings(rendered, "linewatch-worker", monkeypatch, tmp_path)
    spec = one(rendered, "ScaledObject", "linewatch-worker")["spec"]
    assert spec["scaleTargetRef"]["name"] == "linewatch-worker"
    group = f"{settings.app_id}.inspect" if settings.batching.consumer == "getmany" else settings.app_id
    metadata = [t["metadata"] for t in spec["triggers"]]
    assert {m["consumerGroup"] for m in metadata} == {group}
    assert {m["bootstrapServers"] for m in metadata} == {settings.kafka.bootstrap}
    assert sorted(m["topic"] for m in metadata) == sorted([settings.topics.vectors, settings.topics.frames])
    assert {m["offsetResetPolicy"] for m in metadata} == {"earliest"}  # as the worker's consumer
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= settings.topics.partitions
    auth = [t["authenticationRef"]["name"] for t in spec["triggers"] if "authenticationRef" in t]
    sasl = settings.kafka.security_protocol.startswith("SASL")
    assert len(auth) == (len(spec["triggers"]) if sasl else 0), "KEDA must read lag with the workers' credentials"


def cli_command(tokens: list[str]) -> Any:
    command = typer.main.get_command(app)
    for token in tokens:
        if token.startswith("-") or not hasattr(command, "commands"):
            break
        command = command.commands.get(token)
        assert command is not None, f"`linewatch {' '.join(tokens)}`: no command {token!r}"
    return command


def test_commands_exist_in_the_cli(rendered):
    for deployment, verb in (("linewatch-worker", "worker"), ("linewatch-retrain", "retrain")):
        c = container(rendered, deployment)
        assert c["command"] == ["linewatch"], "the image's console script (Dockerfile ENTRYPOINT)"
        assert c["args"][0] == verb
        command = cli_command(c["args"])
        options = {opt for param in command.params for opt in param.opts}
        assert {a for a in c["args"] if a.startswith("-")} <= options, f"{deployment}: unknown options in {c['args']}"
    retrain = one(rendered, "Deployment", "linewatch-retrain")["spec"]
    assert retrain["replicas"] == 1 and retrain["strategy"]["type"] == "Recreate"  # never two agents


def test_the_image_is_the_dockerfiles(rendered):
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["linewatch"\]', dockerfile, re.M)
    uid = int(re.search(r"useradd .*--uid (\d+)", dockerfile).group(1))
    for obj in rendered:
        if spec := pod_spec(obj):
            assert spec["securityContext"]["runAsUser"] == uid and spec["securityContext"]["runAsNonRoot"]
            assert all(c["image"].split(":")[0] == "linewatch" for c in spec["containers"])


def test_gpu_overlay_requests_one_gpu_per_worker_and_cpu_none():
    gpu, cpu = render(K8S / "overlays" / "gpu"), render(K8S / "overlays" / "cpu")
    worker = container(gpu, "linewatch-worker")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["image"] == "linewatch:gpu"
    assert {"name": "LINEWATCH_DEVICE", "value": "cuda"} in worker["env"]
    assert "nvidia.com/gpu" not in json.dumps(container(gpu, "linewatch-retrain")["resources"])
    assert "nvidia.com/gpu" not in json.dumps(cpu)
    assert {"name": "LINEWATCH_DEVICE", "value": "cpu"} in container(cpu, "linewatch-worker")["env"]
    assert container(cpu, "linewatch-worker")["image"] == "linewatch:latest"


# ------------------------------------------------------------------ references and secrets


def test_no_dangling_references(rendered):
    have = {(o["kind"], o["metadata"]["name"]) for o in rendered}
    secrets: set[str] = set()
    for obj in rendered:
        spec = pod_spec(obj)
        if spec is None:
            continue
        assert ("ServiceAccount", spec["serviceAccountName"]) in have
        volumes = {v["name"]: v for v in spec["volumes"]}
        for v in volumes.values():
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in have, v
            if "persistentVolumeClaim" in v:
                assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in have, v
        for c in spec["containers"]:
            assert {m["name"] for m in c.get("volumeMounts", [])} <= set(volumes), c["name"]
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in c and isinstance(c[probe]["httpGet"]["port"], str):
                    assert c[probe]["httpGet"]["port"] in ports
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    assert ("ConfigMap", ref["configMapKeyRef"]["name"]) in have
                if "secretKeyRef" in ref:
                    secrets.add(ref["secretKeyRef"]["name"])
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod_labels = [o["spec"]["template"]["metadata"]["labels"] for o in rendered if pod_spec(o)]
    for obj in rendered:
        if obj["kind"] in ("Service", "PodDisruptionBudget"):
            spec = obj["spec"]
            wanted = (spec["selector"] if obj["kind"] == "Service" else spec["selector"]["matchLabels"]).items()
            assert any(wanted <= labels.items() for labels in pod_labels), f"{obj['kind']} selects no pod"
        if obj["kind"] == "ScaledObject":
            assert ("Deployment", obj["spec"]["scaleTargetRef"]["name"]) in have
            for t in obj["spec"]["triggers"]:
                if "authenticationRef" in t:
                    assert ("TriggerAuthentication", t["authenticationRef"]["name"]) in have
        if obj["kind"] == "TriggerAuthentication":
            secrets |= {ref["name"] for ref in obj["spec"]["secretTargetRef"]}
    assert secrets <= EXTERNAL_SECRETS, f"secrets nobody creates: {secrets - EXTERNAL_SECRETS}"
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert all(name in operations for name in secrets), "every Secret the manifests need is documented"


def test_passwords_come_from_secrets_only(rendered):
    assert not [o for o in rendered if o["kind"] == "Secret"], "no Secret objects (and no values) in the manifests"
    for c in containers(rendered):
        for e in c.get("env", []):
            if re.search(r"PASSWORD|USERNAME|REDIS__URL|REDIS_URL", e["name"]):
                assert "secretKeyRef" in e.get("valueFrom", {}), f"{e['name']} must come from a Secret"
    for cm in (o for o in rendered if o["kind"] == "ConfigMap"):
        for text in cm["data"].values():
            parsed = tomllib.loads(text)
            assert "password" not in json.dumps(parsed).lower() and "redis" not in parsed, "secrets live in Secrets"


def test_worker_pods_serve_health_on_the_pod_address_with_one_process_each():
    env = {e["name"]: e.get("value") for e in container(render(K8S / "base"), "linewatch-worker")["env"]}
    assert env["LINEWATCH_METRICS_HOST"] == "0.0.0.0"  # probes reach the pod IP; 127.0.0.1 would fail them
    assert env["LINEWATCH_WORKER_PROCESSES"] == "1"
