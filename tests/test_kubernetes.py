"""deploy/kubernetes/ checked strictly offline: no cluster can run here (no images, no kubelet).

Each kustomization is rendered by :func:`render` (the few kustomize features the manifests use;
a key it does not know fails the test instead of being ignored), and every object is validated
twice, against Kubernetes ``K8S_VERSION``: by kubernetes-validate in strict mode (the OpenAPI
schema it ships) and by the kubernetes client's pydantic models. Both reject a misspelt field
at any depth and a wrong type; both are pinned in pyproject's ``dev`` extra. What neither
schema knows (a mount naming no volume, a ``$(VAR)`` no env defines, a Secret key, the worker
Job's failure policy) is checked by the tests below it, and the two Jobs' init containers, which
make them wait for the database and for the study, run their scripts here for real.
"""

from __future__ import annotations

import copy
import importlib.metadata
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes_validate.utils import ValidationError as SchemaError
from kubernetes_validate.utils import validate as schema_validate
from pydantic import ValidationError as ModelError

from kdsearch.errors import KDSearchError

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
#: The Kubernetes version both validators check against: kubernetes-validate's schema, and the
#: kubernetes client whose major version tracks it (client 37 = Kubernetes 1.37).
K8S_VERSION = "1.37.0"
KUSTOMIZATIONS = ["base", "with-postgres"]
#: Manifests applied by hand, outside any kustomization.
STANDALONE = ["files-pod.yaml"]
#: The Secrets the manifests name and a user makes by hand (docs/clusters.md), with their keys.
SECRETS = {"kdsearch-storage": {"url"}, "kdsearch-postgres": {"password"}}
#: The kustomization keys :func:`render` implements.
KNOWN = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "images",
    "configMapGenerator",
    "generatorOptions",
}


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(folder: Path) -> list[dict[str, Any]]:
    """What ``kustomize build folder`` gives for the features used here: resources (files and
    folders), components, ConfigMap generators without a name hash, and image overrides."""
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kust) - KNOWN
    assert not unknown, f"{folder}: render() does not implement {sorted(unknown)}"
    objects: list[dict[str, Any]] = []
    for entry in kust.get("resources", []) + kust.get("components", []):
        path = folder / entry
        objects += render(path) if path.is_dir() else _load_all(path)
    if kust.get("configMapGenerator"):
        # Without a hash suffix the generated name is the written one, as render() gives it.
        assert kust.get("generatorOptions") == {"disableNameSuffixHash": True}, folder
    for gen in kust.get("configMapGenerator", []):
        assert set(gen) <= {"name", "literals", "files"}, gen
        data = dict(item.split("=", 1) for item in gen.get("literals", []))
        for item in gen.get("files", []):
            key, _, name = item.rpartition("=")
            data[key or Path(name).name] = (folder / name).read_text()
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": gen["name"]},
                "data": data,
            }
        )
    for image in kust.get("images", []):
        for container in containers(objects):
            name, tag = re.match(r"([^:@]+)(.*)", container["image"]).groups()
            if name == image["name"]:
                tag = f":{image['newTag']}" if "newTag" in image else tag
                container["image"] = image.get("newName", name) + tag
    return objects


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for obj in objects:
        if obj["kind"] == "Pod":
            yield obj["spec"]
        elif "template" in obj.get("spec", {}):
            yield obj["spec"]["template"]["spec"]


def containers(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for spec in pod_specs(objects):
        yield from spec.get("initContainers", []) + spec["containers"]


def model_validate(obj: dict[str, Any]) -> None:
    """The kubernetes client's pydantic model of the object's kind (V1Job, V1Service, ...)."""
    version = obj["apiVersion"].rpartition("/")[2]
    getattr(kubernetes.client, f"{version.capitalize()}{obj['kind']}").model_validate(obj)


def check(obj: dict[str, Any]) -> None:
    schema_validate(obj, K8S_VERSION, strict=True)
    model_validate(obj)


def rendered(name: str) -> list[dict[str, Any]]:
    return render(DEPLOY / name) if name in KUSTOMIZATIONS else _load_all(DEPLOY / name)


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


@pytest.fixture(scope="module")
def with_postgres() -> list[dict[str, Any]]:
    return render(DEPLOY / "with-postgres")


def test_the_validators_are_the_pinned_ones():
    """The versions installed are pyproject's pins, and the client's matches K8S_VERSION."""
    # tomllib is Python 3.11's; the pins are plain "name==version" strings.
    pins = dict(re.findall(r'"([\w.-]+)==([\w.]+)"', (ROOT / "pyproject.toml").read_text()))
    for name in ("kubernetes-validate", "kubernetes"):
        assert pins[name] == importlib.metadata.version(name), name
    assert pins["kubernetes"].split(".")[0] == K8S_VERSION.split(".")[1]


@pytest.mark.parametrize("name", KUSTOMIZATIONS + STANDALONE)
def test_every_object_is_valid(name):
    objects = rendered(name)
    assert objects
    for obj in objects:
        check(obj)


def test_what_the_kustomizations_hold(with_postgres):
    kinds = {(o["kind"], o["metadata"]["name"]) for o in render(DEPLOY / "base")}
    assert kinds == {
        ("PersistentVolumeClaim", "kdsearch-files"),
        ("Job", "kdsearch-create-study"),
        ("Job", "kdsearch-workers"),
        ("Deployment", "kdsearch-dashboard"),
        ("Service", "kdsearch-dashboard"),
        ("ConfigMap", "kdsearch-study"),
    }
    added = {(o["kind"], o["metadata"]["name"]) for o in with_postgres} - kinds
    assert added == {("StatefulSet", "kdsearch-postgres"), ("Service", "kdsearch-postgres")}
    # The one image setting reaches every kdsearch container, init containers included.
    images = {c["image"] for c in containers(with_postgres)} - {"postgres:15"}
    assert images == {"registry.example.com/kdsearch-worker:latest"}


def _rename(obj: dict[str, Any], path: str, new: str) -> None:
    *parents, key = path.split(".")
    node = obj
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[new] = node.pop(key)


def _retype(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, key = path.split(".")
    node = obj
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    assert key in node, path
    node[key] = value


WORKER_ENV = "spec.template.spec.containers.0.env.1.valueFrom.secretKeyRef"


@pytest.mark.parametrize(
    "change",
    [
        lambda job: _rename(job, "spec.completionMode", "completionMod"),
        lambda job: _rename(job, f"{WORKER_ENV}.name", "nmae"),
        lambda job: _rename(job, "spec.podFailurePolicy.rules.2.onExitCodes.values", "value"),
        lambda job: _retype(job, "spec.parallelism", "four"),
    ],
    ids=["completionMod", "secretKeyRef.nmae", "onExitCodes.value", "parallelism-str"],
)
def test_a_misspelt_field_or_wrong_type_fails_both_validators(change):
    job = find(render(DEPLOY / "base"), "Job", "kdsearch-workers")
    check(job)
    broken = copy.deepcopy(job)
    change(broken)
    with pytest.raises(SchemaError):
        schema_validate(broken, K8S_VERSION, strict=True)
    with pytest.raises(ModelError):
        model_validate(broken)


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


@pytest.mark.parametrize("name", KUSTOMIZATIONS + STANDALONE)
def test_no_storage_url_or_password_is_written(name):
    objects = rendered(name)
    # The manifests ship no Secret: the user makes them (docs/clusters.md).
    assert not [o for o in objects if o["kind"] == "Secret"]
    # A database URL, or any URL with a password (user:password@).
    url = re.compile(r"(postgres|mysql|sqlite|oracle|mssql)[\w+]*://|://[^\s/@:]+:[^\s/@]+@")
    written = [s for s in _strings(objects) if url.search(s)]
    assert not written, written
    for container in containers(objects):
        for env in container.get("env", []):
            if env["name"] in ("KDSEARCH_STORAGE", "POSTGRES_PASSWORD"):
                ref = env["valueFrom"]["secretKeyRef"]
                assert ref["key"] in SECRETS[ref["name"]], env
                assert "value" not in env, env


def test_names_and_keys_resolve(with_postgres):
    """What only a cluster would report: names and keys that point at nothing."""
    objects = with_postgres + _load_all(DEPLOY / "files-pod.yaml")
    maps = {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    for obj in objects:
        if obj["kind"] not in ("Pod", "Job", "Deployment", "StatefulSet"):
            continue
        spec = obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            if "configMap" in v:
                keys = {i["key"] for i in v["configMap"]["items"]}
                assert keys <= maps[v["configMap"]["name"]].keys(), v
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, v
        # A StatefulSet's claim templates are volumes of its pods.
        volumes.update(
            {t["metadata"]["name"]: t for t in obj["spec"].get("volumeClaimTemplates", [])}
        )
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes.keys(), c["name"]
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["key"] in maps[ref["configMapKeyRef"]["name"]]
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["key"] in SECRETS[ref["secretKeyRef"]["name"]]
            # Kubernetes passes a $(VAR) that the container's env does not define on literally,
            # and a shell script's $VAR would be empty.
            defined = {e["name"] for e in c.get("env", [])}
            used = {v for a in c.get("args", []) for v in re.findall(r"\$\((\w+)\)", a)}
            used |= {v for a in c.get("command", [])[2:] for v in re.findall(r"\$\{?(\w+)", a)}
            assert used <= defined, (c["name"], used - defined)


def test_selectors_match(with_postgres):
    templates = {
        o["metadata"]["name"]: o["spec"]
        for o in with_postgres
        if o["kind"] in ("Deployment", "StatefulSet")
    }
    for spec in templates.values():
        assert (
            spec["selector"]["matchLabels"].items()
            <= spec["template"]["metadata"]["labels"].items()
        )
    for service in (o for o in with_postgres if o["kind"] == "Service"):
        # Each Service reaches the pods of the workload of its own name, and no others.
        name, selector = service["metadata"]["name"], service["spec"]["selector"].items()
        chosen = [
            n
            for n, s in templates.items()
            if selector <= s["template"]["metadata"]["labels"].items()
        ]
        assert chosen == [name], (name, chosen)
        # A named targetPort must be a port the pods declare.
        ports = {
            p["name"] for c in templates[name]["template"]["spec"]["containers"] for p in c["ports"]
        }
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, name


def test_worker_job():
    objects = render(DEPLOY / "base")
    job = find(objects, "Job", "kdsearch-workers")["spec"]
    pod = job["template"]["spec"]
    (worker,) = pod["containers"]
    assert job["completionMode"] == "Indexed" and job["parallelism"] == job["completions"] >= 1
    # podFailurePolicy needs restartPolicy Never; a per-index limit retries each worker alone.
    assert pod["restartPolicy"] == "Never" and job["backoffLimitPerIndex"] >= 1
    ignore, stopped, fail = job["podFailurePolicy"]["rules"]
    assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    # A worker a stop signal ended (128 + SIGINT/SIGTERM, kdsearch.search.worker.run) is
    # started again without counting a retry.
    assert stopped == {
        "action": "Ignore",
        "onExitCodes": {"containerName": worker["name"], "operator": "In", "values": [130, 143]},
    }
    # kdsearch's exit code for a mistake a retry cannot mend fails the Job.
    assert fail["action"] == "FailJob" and fail["onExitCodes"] == {
        "containerName": worker["name"],
        "operator": "In",
        "values": [KDSearchError.exit_code],
    }
    assert worker["args"][:5] == ["worker", "--study", "$(KDSEARCH_STUDY)", "--n-workers", "1"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # SIGTERM then SIGKILL: leave the worker time to re-queue its trial (see the manifest).
    assert pod["terminationGracePeriodSeconds"] >= 60
    # The study must exist before a worker starts, or the worker exits 2 and fails the Job.
    (wait,) = pod["initContainers"]
    assert "status --study" in wait["command"][-1]
    mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # Trial folders are the pod's own; resume state crosses pods through the artifact store.
    assert "emptyDir" in volumes[mounts["/app/models/studies"]["name"]]
    assert "persistentVolumeClaim" in volumes[mounts["/app/models"]["name"]]


def test_the_study_spec_validates(tmp_path):
    """study.yaml, as the pods read it: its base is the image's copy of studies/."""
    from kdsearch import api

    study = DEPLOY / "base" / "study.yaml"
    raw = yaml.safe_load(study.read_text())
    assert raw["base"].startswith("/app/studies/") and "storage" not in raw
    local = tmp_path / "study.yaml"
    text = study.read_text().replace("/app/studies/", f"{ROOT}/studies/")
    local.write_text(text)
    spec = api.validate(str(local))
    assert spec.search.artifact_store == "models/artifacts"
    mount = find(render(DEPLOY / "base"), "Job", "kdsearch-create-study")
    args = mount["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:4] == [
        "create-study",
        "/app/deploy/study.yaml",
        "--study-name",
        "$(KDSEARCH_STUDY)",
    ]


def _init_script(job: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """A Job's init container's ``sh -c`` script, run here with this venv's kdsearch."""
    pod = find(render(DEPLOY / "base"), "Job", job)["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.Popen(
        init["command"],
        env={**os.environ, "PATH": path, **env},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so that its sleep goes too (killpg below)
    )


@pytest.mark.slow
def test_create_study_waits_for_the_database(tmp_path):
    """Its init container retries until the storage answers: here a SQLite file whose folder
    does not exist yet, then does."""
    folder = tmp_path / "db"
    env = {"KDSEARCH_STORAGE": f"sqlite:///{folder / 'kd.db'}"}
    proc = _init_script("kdsearch-create-study", env, tmp_path)
    try:
        # One try failed, saying why in kdsearch's one line (the pod's log); it tries again.
        assert "kdsearch: error: storage:" in proc.stderr.readline()
        folder.mkdir()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_workers_wait_for_their_study(
    kd_home: Path, write_spec: Callable[..., Path], cli: Callable[..., Any]
) -> None:
    """A worker given an unknown study exits 2, which fails the Job: so the worker pods' init
    container waits until create-study has made the study."""
    url = f"sqlite:///{kd_home / 'kd.db'}"
    proc = _init_script(
        "kdsearch-workers", {"KDSEARCH_STUDY": "k8s", "KDSEARCH_STORAGE": url}, kd_home
    )
    try:
        assert "unknown 'k8s'" in proc.stderr.readline()  # one try, and it tries again
        made = cli("create-study", str(write_spec()), "--study-name", "k8s", "--storage", url)
        assert made.returncode == 0, made.stderr
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
