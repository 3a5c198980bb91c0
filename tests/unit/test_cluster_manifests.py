"""cluster/ manifests validate offline: KubeRay RayCluster/RayJob against the ray.io/v1 schemas
kept in tests/data/kuberay (pod templates resolve into the strict Kubernetes schemas shipped by
kubernetes-validate), core objects against kubernetes-validate. A misspelt or mistyped field
fails."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml
from kubernetes_validate.utils import latest_version

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
SCHEMAS = ROOT / "tests" / "data" / "kuberay"
K8S_VERSION = latest_version()


def _k8s_definitions() -> dict:
    import importlib.resources

    base = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    path = base / f"v{K8S_VERSION}-local-strict" / "_definitions.json"
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.protocols.Validator]:
    k8s = _k8s_definitions()
    registry = referencing.Registry().with_resource(
        k8s["$id"], referencing.Resource.from_contents(k8s)
    )
    out = {}
    for kind, name in [("RayCluster", "raycluster"), ("RayJob", "rayjob")]:
        schema = json.loads((SCHEMAS / f"{name}-ray.io-v1.json").read_text())
        out[kind] = jsonschema.Draft202012Validator(schema, registry=registry)
    return out


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(CLUSTER.glob("*.yaml")):
        if path.name == "runtime_env.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            docs.append((f"{path.name}:{doc['kind']}", doc))
    return docs


def _validate(doc: dict, validators) -> None:
    if doc["apiVersion"].startswith("ray.io/"):
        errors = sorted(validators[doc["kind"]].iter_errors(doc), key=lambda e: e.path)
        if errors:
            raise jsonschema.ValidationError(
                "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
            )
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


DOCS = _documents()


def test_cluster_directory_has_the_expected_objects():
    kinds = {name.split(":")[1] for name, _ in DOCS}
    assert {"RayCluster", "RayJob", "Deployment", "Service", "NetworkPolicy"} <= kinds


@pytest.mark.parametrize(("name", "doc"), DOCS, ids=[n for n, _ in DOCS])
def test_every_manifest_validates(name, doc, validators):
    _validate(doc, validators)


def _by_kind(kind: str) -> dict:
    return copy.deepcopy(next(doc for _, doc in DOCS if doc["kind"] == kind))


@pytest.mark.parametrize(
    ("kind", "mutate"),
    [
        ("RayJob", lambda d: d["spec"].update(shutdownAfterJobFinish=True)),
        ("RayJob", lambda d: d["spec"].update(ttlSecondsAfterFinished="600")),
        ("RayJob", lambda d: d["spec"].update(submissionMode="K8sMode")),
        ("RayJob", lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"].pop("rayStartParams")),
        (
            "RayCluster",
            lambda d: d["spec"]["workerGroupSpecs"][0].update(maxReplica=2),
        ),
        (
            "RayCluster",
            lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(
                imagePullPolicyy="Always"
            ),
        ),
        (
            "RayCluster",
            lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
                "env"
            ].append({"name": "X", "valu": "1"}),
        ),
        ("Deployment", lambda d: d["spec"].update(replica=1)),
        ("Service", lambda d: d["spec"]["ports"][0].update(port="6379")),
    ],
)
def test_misspelt_or_mistyped_field_fails(kind, mutate, validators):
    doc = _by_kind(kind)
    _validate(doc, validators)  # the unmodified manifest is valid
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError):
        _validate(doc, validators)


def test_rayjob_runs_a_shipped_config_and_cleans_up():
    job = _by_kind("RayJob")["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[:2] == ["reelrl", "train"]
    assert (ROOT / argv[2].removeprefix("/app/")).is_file()  # the image's WORKDIR is /app
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0
    assert isinstance(yaml.safe_load(job["runtimeEnvYAML"]), dict)
    workers = job["rayClusterSpec"]["workerGroupSpecs"]
    gpu = workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu["nvidia.com/gpu"]) >= 1


def test_redis_is_durable_private_and_password_protected():
    deploy = _by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(deploy["args"])
    assert "--appendonly yes" in args and "--appendfsync everysec" in args
    assert '--requirepass "$REDIS_PASSWORD"' in args
    (env,) = [e for e in deploy["env"] if e["name"] == "REDIS_PASSWORD"]
    assert env["valueFrom"]["secretKeyRef"]["name"] == "reelrl-redis"
    assert _by_kind("Service")["spec"]["type"] == "ClusterIP"
    policy = _by_kind("NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"] and policy["ingress"][0]["from"]


def test_runtime_env_uses_only_ray_runtime_env_fields():
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    known = {"working_dir", "py_modules", "excludes", "env_vars", "pip", "uv", "conda"}
    assert set(env) <= known
    assert all(isinstance(v, str) for v in env["env_vars"].values())


def test_dockerfile_copies_paths_that_exist():
    for line in (CLUSTER / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src


def _pods(doc: dict) -> list[dict]:
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


def test_storage_is_claimed_shared_and_mounted_everywhere():
    claims = {
        doc["metadata"]["name"]: doc["spec"]
        for name, doc in DOCS
        if doc["kind"] == "PersistentVolumeClaim" and name.startswith("pvc.yaml")
    }
    assert claims["reelrl-runs"]["accessModes"] == ["ReadWriteMany"]
    assert claims["reelrl-models"]["accessModes"] == ["ReadOnlyMany"]
    assert claims["reelrl-data"]["accessModes"] == ["ReadOnlyMany"]
    for kind in ("RayCluster", "RayJob"):
        for pod in _pods(_by_kind(kind)):
            used = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}  # fmt: skip
            assert used == set(claims), (kind, used)
            mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
            assert {"/app/runs", "/models", "/data"} <= set(mounts), (kind, mounts)
            assert mounts["/models"]["readOnly"] and mounts["/data"]["readOnly"]
        for pod in _pods(_by_kind(kind))[1:]:  # GPU workers: a memory-backed /dev/shm
            shm = [v for v in pod["volumes"] if v["name"] == "dshm"]
            assert shm and shm[0]["emptyDir"]["medium"] == "Memory"


def test_rayjob_entrypoint_paths_are_absolute():
    argv = shlex.split(_by_kind("RayJob")["spec"]["entrypoint"])
    assert argv[2].startswith("/app/") and (ROOT / argv[2].removeprefix("/app/")).is_file()
    paths = [a for a in argv[3:] if "path" in a or "root" in a or "output_dir" in a]
    assert paths and all("=/" in a or "path: /" in a for a in paths), paths
