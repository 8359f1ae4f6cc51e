"""Static checks of docker/: no Docker engine runs in CI, so we check what compose and the
image build would read, resolving ${...} from docker/.env.example the way compose does."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
# $$ (a literal $), ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}.
VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.groups()
        value = env.get(name)
        # Compose would substitute "" for an unset plain ${VAR}; here that is a bug to report.
        if op is None and value is None:
            raise KeyError(f"{name} is not set in .env.example")
        if op is None or not (value is None or (op.startswith(":") and value == "")):
            return value
        if op.endswith("?"):
            raise KeyError(f"{name}: {arg}")
        return arg

    return VAR.sub(sub, text)


def resolve(node, env):
    if isinstance(node, dict):
        return {k: resolve(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, env) for v in node]
    return interpolate(node, env) if isinstance(node, str) else node


@pytest.fixture(scope="module")
def compose() -> dict:
    env: dict[str, str] = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = interpolate(value.strip().strip("\"'"), env)  # earlier lines only
    # safe_load applies the `<<` merges of the x-* anchors, as compose does.
    return resolve(yaml.safe_load((DOCKER / "compose.yaml").read_text()), env)


def workers(compose: dict) -> dict:
    return {n: s for n, s in compose["services"].items() if n.startswith("worker")}


def test_services_postgres_and_ports(compose):
    services = compose["services"]
    assert {"postgres", "create-study", "worker", "dashboard"} <= services.keys()
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:15")
    mounts = dict(v.split(":")[1::-1] for v in pg["volumes"])
    # A declared named volume, not a bind mount or an anonymous one, keeps the database.
    assert mounts["/var/lib/postgresql/data"] in (compose.get("volumes") or {})
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    # Only the dashboard is published; the database stays on the compose network.
    assert [n for n, s in services.items() if "ports" in s] == ["dashboard"]


def test_one_storage_url_for_all_kdsearch_services(compose):
    services = compose["services"]
    users = [services["create-study"], *workers(compose).values()]
    urls = {s["environment"]["KDSEARCH_STORAGE"] for s in users}
    urls.add(services["dashboard"]["environment"]["KDSEARCH_STORAGE"])
    assert len(urls) == 1, urls
    # Never an argument: the host's `ps` shows every container's argv, password included.
    args = [a for s in services.values() for a in s.get("command") or [] if "://" in str(a)]
    assert not args, args
    url, pg = urlsplit(urls.pop()), services["postgres"]["environment"]
    assert url.scheme.startswith("postgresql") and (url.hostname, url.port) == ("postgres", 5432)
    assert (url.username, url.password, url.path) == (
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        "/" + pg["POSTGRES_DB"],
    )


def test_workers_gpu_restart_and_order(compose):
    gpus = []
    for name, w in workers(compose).items():
        cmd = w["command"]
        if name == "worker-cpu":  # a host without GPUs: no reservation, the CPU named
            assert "resources" not in w["deploy"] and cmd[cmd.index("--devices") + 1] == "cpu"
        else:
            (dev,) = w["deploy"]["resources"]["reservations"]["devices"]
            assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"], name
            # Pinned ids: replicas that each reserve `count: 1` would all get the same GPU.
            assert len(dev["device_ids"]) == 1, name
            gpus += dev["device_ids"]
        assert int(w["deploy"]["replicas"]) >= 1 and w["restart"] == "on-failure", name
        cmd, study = w["command"], w["environment"]["KDSEARCH_STUDY"]
        assert cmd[0] == "worker" and cmd[cmd.index("--study") + 1] == study, name
        assert w["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert w["depends_on"]["create-study"]["condition"] == "service_completed_successfully"
    assert len(gpus) == len(set(gpus)) >= 1, gpus
    assert compose["services"]["create-study"]["command"][0] == "create-study"


@pytest.mark.parametrize(
    "name", ["create-study", "worker", "worker-gpu1", "worker-cpu", "dashboard"]
)
def test_data_and_models_mounted(compose, name):
    # Bind sources are relative to docker/; study specs name data/ and models/ under /app.
    binds = (v.split(":") for v in compose["services"][name]["volumes"])
    mounts = {target: (DOCKER / host).resolve() for host, target, *_ in binds}
    assert mounts["/app/data"] == ROOT / "data" and mounts["/app/models"] == ROOT / "models"


def test_dashboard(compose):
    dash = compose["services"]["dashboard"]
    assert "entrypoint" not in dash and dash["command"][0] == "dashboard"  # kdsearch dashboard
    assert dash["image"] == compose["services"]["worker"]["image"]  # which has it installed
    cmd = dash["command"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and cmd[cmd.index("--port") + 1] == "8080"
    # Inside it binds 0.0.0.0; without auth, the host side must be loopback only.
    assert [p.split(":")[::2] for p in dash["ports"]] == [["127.0.0.1", "8080"]]


def test_dockerfile():
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    ins = [ln.strip().split(None, 1) for ln in text.splitlines()]
    ins = [(i[0].upper(), i[1] if len(i) > 1 else "") for i in ins if i and i[0][0] != "#"]
    (base,) = [a for op, a in ins if op == "FROM"]
    pins = {a.split("=", 1)[0]: a.split("=", 1)[1] for op, a in ins if op == "ARG" and "=" in a}
    # The base is a build argument (a registry-free host builds on its own), python by default.
    assert base == "${BASE}" and re.fullmatch(r"python:3\.\d+-slim", pins["BASE"]), base
    # The image installs the torch/torchvision pair the venv (and so every test) runs.
    import torch
    import torchvision

    assert pins["TORCH"] == torch.__version__.split("+")[0]
    assert pins["TORCHVISION"] == torchvision.__version__.split("+")[0]
    last = dict(ins)  # as in Docker, the last ENTRYPOINT / WORKDIR / USER wins
    assert json.loads(last["ENTRYPOINT"]) == ["kdsearch"]  # exec form: signals reach kdsearch
    assert last["WORKDIR"] == "/app" and last["USER"] not in ("root", "0")
    installs = [c.strip() for op, a in ins if op == "RUN" for c in a.split("&&")]
    installs = [c for c in installs if c.startswith("pip install") and c.endswith(" .")]
    # kdsearch is installed, and never in a way that lets pip replace the base's torch.
    assert installs and all("--constraint" in c or "--no-deps" in c for c in installs)
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for src in (s for op, a in ins if op == "COPY" for s in a.split()[:-1] if s[0] != "-"):
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert "!" + src.rstrip("/") in ignore, f"COPY {src}: excluded by .dockerignore"


def _compose_cli() -> list[str] | None:
    """`docker compose` (the v2 plugin), else Debian's `docker-compose` (v1), else None."""
    docker = shutil.which("docker")
    plugin = [docker, "compose"] if docker else []
    if plugin and not subprocess.run([*plugin, "version"], capture_output=True).returncode:
        return plugin
    v1 = shutil.which("docker-compose")
    return [v1] if v1 else None


def test_compose_config_cli():
    compose = _compose_cli()
    if compose is None:
        pytest.skip("no docker compose / docker-compose (apt-get install docker-compose)")
    args = ["-f", DOCKER / "compose.yaml", "--env-file", DOCKER / ".env.example"]
    cmd = [*compose, *args, "--profile", "gpu1", "--profile", "cpu", "config", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"KDSEARCH": "/nonexistent/kdsearch"}, "the host's kdsearch (/nonexistent/kdsearch) is"),
        ({"KDSEARCH_ENGINE": "no-such-engine"}, "KDSEARCH_ENGINE=no-such-engine is not on PATH"),
    ],
    ids=["no-host-kdsearch", "no-engine"],
)
def test_check_script_refuses_before_it_builds(tmp_path, env, says):
    """docker/check.sh checks what it needs first: a newcomer without the host's .venv used to
    learn it from exit code 127 after six minutes of building and searching."""
    out = tmp_path / "out"
    host_kdsearch = str(Path(sys.executable).with_name("kdsearch"))
    proc = subprocess.run(
        ["bash", str(DOCKER / "check.sh"), str(out)],
        env={**os.environ, "KDSEARCH": host_kdsearch, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"docker/check.sh: {says}"), line
    # Nothing built or started: not even the output folder was made.
    assert proc.stdout == "" and not out.exists()
