"""Static checks of the container and cluster files in docker/ (no Docker engine, no network).

Each file has a `*_problems(text)` function returning what is wrong with it; the tests assert
that the real files have no problems, and the `*_can_fail` tests feed them broken variants
(a port bound to 0.0.0.0, a literal password, token auth off, a root USER, ...) to show that
every check actually fires.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
SHARED = "/shared"

# names of environment variables holding credentials
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)
# Compose interpolation: $$ (escape), ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?msg}, $VAR
_INTERP = re.compile(
    r"\$(?:(?P<esc>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
_REQUIRED_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?\?[^}]*)?\}")
_URI_WITH_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:'\"]+:[^\s/@'\"]+@")
_SECRET_ASSIGNMENT = re.compile(r"(?i)(password|secret|token)[\w-]*\s*[=:]\s*[^\s$]")


def read(name: str) -> str:
    return (DOCKER / name).read_text()


def env_example(text: str | None = None) -> dict[str, str]:
    """KEY=VALUE lines of docker/.env.example."""
    text = read(".env.example") if text is None else text
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            if sep:
                env[key.strip()] = value.strip().strip("'\"")
    return env


def image_name() -> str:
    """The GPU image every cluster file must run: PITFALLS_IMAGE of .env.example."""
    return env_example()["PITFALLS_IMAGE"]


def interpolate(value, env: dict[str, str]):
    """Compose's variable interpolation of every string in `value` (with `env` as .env)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m["esc"]:
            return "$"
        name = m["braced"] or m["bare"]
        op, arg = m["op"] or "", m["arg"] or ""
        have = env.get(name)
        if op.startswith(":") and not have:
            have = None
        if op.endswith("-"):
            return arg if have is None else have
        if have is None:
            raise KeyError(f"${{{name}}} is not set ({arg or 'no default'})")
        return have

    return _INTERP.sub(one, value)


def variables(text: str) -> set[str]:
    """Names of the variables a Compose file interpolates ($$ is an escape, not a variable)."""
    return {m["braced"] or m["bare"] for m in _INTERP.finditer(text) if not m["esc"]}


def strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def argv(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command or []]


def option(args: list[str], name: str) -> str | None:
    """Value of `--name value` or `--name=value` in an argument list."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


# ----------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # blank lines and comments (also inside a continued instruction)
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def dockerfile_stages(text: str) -> tuple[dict[str, str], list[dict]]:
    """Global ARG defaults and the stages: {image, name, instructions}."""
    global_args, stages = {}, []
    for word, rest in dockerfile_instructions(text):
        if word == "FROM":
            parts = [p for p in rest.split() if not p.startswith("--")]
            image = interpolate(parts[0], global_args)
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append({"image": image, "name": name, "instructions": []})
        elif not stages:
            if word == "ARG":
                key, _, default = rest.partition("=")
                global_args[key.strip()] = default.strip()
        else:
            stages[-1]["instructions"].append((word, rest))
    return global_args, stages


def env_assignments(rest: str) -> dict[str, str]:
    tokens = shlex.split(rest, posix=True)
    if tokens and "=" not in tokens[0]:  # legacy `ENV KEY value`
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(t.split("=", 1) for t in tokens if "=" in t)


def dockerfile_problems(text: str) -> list[str]:
    problems = []
    _, stages = dockerfile_stages(text)
    if not stages:
        return ["no FROM"]
    final = stages[-1]
    if not re.match(r"(docker\.io/)?(nvidia/cuda|rayproject/ray):", final["image"]):
        problems.append(f"final image is based on {final['image']!r}, not a CUDA/Ray GPU image")

    # uv from the official image
    uv_aliases = {s["name"] for s in stages if s["image"].startswith("ghcr.io/astral-sh/uv")}
    copies_from = [re.search(r"--from=(\S+)", rest) for word, rest in final["instructions"]
                   if word == "COPY"]
    if not any(m and (m[1] in uv_aliases or m[1].startswith("ghcr.io/astral-sh/uv"))
               for m in copies_from):
        problems.append("uv is not copied from the official ghcr.io/astral-sh/uv image")

    # installed from the lock: dependencies first, then the source, then the project
    runs = [(i, rest) for i, (word, rest) in enumerate(final["instructions"]) if word == "RUN"]
    syncs = [(i, rest) for i, rest in runs if re.search(r"\buv sync\b", rest)]
    if not syncs:
        problems.append("the project is not installed with `uv sync --locked`")
    for _, rest in syncs:
        if "--locked" not in rest:
            problems.append(f"`uv sync` without --locked: {rest}")
        if "--no-dev" not in rest:
            problems.append(f"`uv sync` without --no-dev: {rest}")
    for _, rest in runs:
        if re.search(r"\bpip install\b", rest):
            problems.append(f"the GPU image installs packages outside the lock: {rest}")
    deps = [i for i, rest in syncs if "--no-install-project" in rest]
    source = [i for i, (word, rest) in enumerate(final["instructions"])
              if word in ("COPY", "ADD") and "--from" not in rest
              and re.search(r"(^|\s)(\./)?pitfalls/?(\s|$)|(^|\s)\.(\s|$)", rest)]
    project = [i for i, rest in syncs if "--no-install-project" not in rest]
    if not (deps and source and project and deps[0] < source[0] < project[-1]):
        problems.append("no dependencies layer first (`uv sync --locked --no-install-project` "
                        "before the source is copied, then `uv sync --locked`)")

    env = {}
    for word, rest in final["instructions"]:
        if word == "ENV":
            env.update(env_assignments(rest))
    if env.get("RAY_AUTH_MODE") != "token":
        problems.append(f"ENV RAY_AUTH_MODE is {env.get('RAY_AUTH_MODE')!r}, not 'token'")
    venv = env.get("UV_PROJECT_ENVIRONMENT", "/app/.venv").rstrip("/")
    if not env.get("PATH", "").startswith(f"{venv}/bin:"):
        problems.append(f"ENV PATH does not start with the venv ({venv}/bin)")

    for stage in stages:
        words = [w for w, _ in stage["instructions"]]
        if stage is not final and not {"CMD", "ENTRYPOINT"} & set(words):
            continue  # a build-only stage (e.g. the uv image)
        users = [rest for w, rest in stage["instructions"] if w == "USER"]
        user = users[-1].split(":")[0] if users else "root"
        if user in ("root", "0"):
            problems.append(f"stage {stage['name'] or stage['image']} runs as root (USER {user})")
    return problems


def dockerignore_problems(text: str) -> list[str]:
    patterns = {line.strip().rstrip("/").removeprefix("/") for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")}
    problems = []
    for needed in (".venv", "runs", ".git", ".env"):
        if needed not in patterns and f"**/{needed}" not in patterns:
            problems.append(f".dockerignore does not exclude {needed}")
    if not patterns & {"**/__pycache__", "__pycache__", ".pytest_cache", ".ruff_cache"}:
        problems.append(".dockerignore does not exclude caches")
    return problems


def test_dockerfile():
    assert dockerfile_problems(read("Dockerfile")) == []


def test_dockerignore():
    # the build context is the repository root, so the root .dockerignore is the one used
    assert dockerignore_problems((ROOT / ".dockerignore").read_text()) == []


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("USER ray\nCMD", "USER root\nCMD", "runs as root"),
    ("\nUSER ray\n", "\n", "runs as root"),
    ("RAY_AUTH_MODE=token \\", "RAY_AUTH_MODE=disabled \\", "RAY_AUTH_MODE"),
    ("uv sync --locked --no-dev --no-editable", "uv pip install --no-deps .", "dependencies layer"),
    ("uv sync --locked --no-dev --no-install-project", "uv sync --no-dev --no-install-project",
     "without --locked"),
    ("PATH=/opt/venv/bin:$PATH", "PATH=$PATH", "PATH"),
    ("COPY --from=uv /uv /uvx /usr/local/bin/", "RUN curl -LsSf https://astral.sh/uv/install.sh | sh",
     "ghcr.io/astral-sh/uv"),
])
def test_dockerfile_checks_can_fail(old, new, expected):
    text = read("Dockerfile")
    assert old in text
    problems = dockerfile_problems(text.replace(old, new))
    assert any(expected in p for p in problems), problems


def test_dockerignore_checks_can_fail():
    text = (ROOT / ".dockerignore").read_text()
    assert ".venv\n" in text
    assert any(".venv" in p for p in dockerignore_problems(text.replace(".venv\n", "")))


# ----------------------------------------------------------------------------- compose.yaml


def published_ports(service: dict) -> list[tuple[str | None, str]]:
    """(host ip or None, the port entry) for every port a service publishes on the host."""
    out = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):  # long syntax
            if entry.get("published") is not None:
                out.append((entry.get("host_ip"), str(entry)))
            else:
                out.append((None, str(entry)))  # random host port on every interface
            continue
        spec = str(entry).split("/")[0]
        parts = spec.rsplit(":", 2)
        out.append((parts[0] if len(parts) == 3 else None, str(entry)))
    return out


def mounts(service: dict) -> dict[str, str]:
    """target -> source of a service's volumes."""
    out = {}
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            out[v.get("target")] = v.get("source")
        else:
            parts = str(v).split(":")
            if len(parts) >= 2:
                out[parts[1]] = parts[0]
    return out


def compose_problems(text: str, env_text: str | None = None,
                     dockerfile_text: str | None = None) -> list[str]:
    problems = []
    env = env_example(env_text)
    raw = yaml.safe_load(text)
    services_raw = raw.get("services") or {}
    used = set().union(*(variables(s) for s in strings(raw)))  # comments are not interpolated
    missing = sorted(used - set(env))
    if missing:
        problems.append(f"variables not in .env.example: {missing}")
        return problems
    compose = interpolate(raw, env)
    services = compose.get("services") or {}
    for name in ("ray-head", "ray-worker", "mlflow", "postgres", "minio"):
        if name not in services:
            problems.append(f"service {name} is missing")
    if problems:
        return problems
    head, worker, mlflow = services["ray-head"], services["ray-worker"], services["mlflow"]

    # images and build targets
    _, stages = dockerfile_stages(dockerfile_text or read("Dockerfile"))
    stage_names = {s["name"] for s in stages}
    for name in ("ray-head", "ray-worker"):
        if services[name].get("image") != image_name():
            problems.append(f"{name} image is {services[name].get('image')!r}, not {image_name()!r}")
    for name, svc in services.items():
        build = svc.get("build")
        if isinstance(build, dict):
            if build.get("dockerfile") != "docker/Dockerfile" or build.get("context") != "..":
                problems.append(f"{name} builds {build}, not docker/Dockerfile in the repository root")
            if build.get("target") and build["target"] not in stage_names:
                problems.append(f"{name} builds target {build['target']!r}, not a Dockerfile stage")
    if not str(services["postgres"].get("image", "")).startswith("postgres:"):
        problems.append("postgres does not use the official postgres image")
    if "minio" not in str(services["minio"].get("image", "")):
        problems.append("minio does not use a MinIO image")

    # Ray: token auth on, head/worker commands, GPUs, the shared volume
    for name, svc in (("ray-head", head), ("ray-worker", worker)):
        svc_env = environment(svc)
        if svc_env.get("RAY_AUTH_MODE") != "token":
            problems.append(f"{name}: RAY_AUTH_MODE is {svc_env.get('RAY_AUTH_MODE')!r}, not token")
        if not _REQUIRED_VAR.fullmatch(environment(services_raw[name]).get("RAY_AUTH_TOKEN", "")):
            problems.append(f"{name}: RAY_AUTH_TOKEN does not come from a required ${{VAR}}")
    head_cmd, worker_cmd = argv(head.get("command")), argv(worker.get("command"))
    if head_cmd[:2] != ["ray", "start"] or "--head" not in head_cmd:
        problems.append(f"ray-head does not run `ray start --head`: {head_cmd}")
    if worker_cmd[:2] != ["ray", "start"] or option(worker_cmd, "--address") != "ray-head:6379":
        problems.append(f"ray-worker does not join ray-head:6379: {worker_cmd}")
    devices = (((worker.get("deploy") or {}).get("resources") or {}).get("reservations")
               or {}).get("devices") or []
    if not any(d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or [])
               for d in devices):
        problems.append("ray-worker reserves no nvidia GPU (deploy.resources.reservations.devices)")
    head_shared, worker_shared = mounts(head).get(SHARED), mounts(worker).get(SHARED)
    if not head_shared or head_shared != worker_shared:
        problems.append(f"ray-head and ray-worker do not mount the same volume at {SHARED}")
    elif "/" not in head_shared and head_shared not in (compose.get("volumes") or {}):
        problems.append(f"volume {head_shared} is not declared")

    # MLflow: postgres backend, artifacts on MinIO, one worker, reachable as http://mlflow:5000
    cmd = argv(mlflow.get("command"))
    if cmd[:2] != ["mlflow", "server"]:
        problems.append(f"mlflow does not run `mlflow server`: {cmd}")
    if not str(option(cmd, "--backend-store-uri")).startswith("postgresql://"):
        problems.append("mlflow --backend-store-uri is not postgresql://...")
    if option(cmd, "--artifacts-destination") != "s3://mlflow/":
        problems.append("mlflow --artifacts-destination is not s3://mlflow/")
    if option(cmd, "--workers") != "1":
        problems.append("mlflow does not run with --workers 1")
    m_env = environment(mlflow)
    if m_env.get("MLFLOW_S3_ENDPOINT_URL") != "http://minio:9000":
        problems.append("mlflow: MLFLOW_S3_ENDPOINT_URL is not http://minio:9000")
    if m_env.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "").lower() != "false":
        problems.append("mlflow: MLFLOW_SERVER_ENABLE_JOB_EXECUTION is not false")
    if "mlflow:5000" not in m_env.get("MLFLOW_SERVER_ALLOWED_HOSTS", "").split(","):
        problems.append("mlflow: MLFLOW_SERVER_ALLOWED_HOSTS does not allow mlflow:5000")
    if not any(entry.endswith(":5000") for _, entry in published_ports(mlflow)):
        problems.append("mlflow's port 5000 is not published")
    if not services["postgres"].get("healthcheck") or not services["postgres"].get("volumes"):
        problems.append("postgres has no healthcheck or no volume")

    # every published host port on 127.0.0.1 only
    for name, svc in services.items():
        if svc.get("network_mode") == "host":
            problems.append(f"{name}: network_mode host publishes every port")
        for ip, entry in published_ports(svc):
            if ip != "127.0.0.1":
                problems.append(f"{name}: port {entry!r} is not bound to 127.0.0.1")

    # no literal credentials
    for name, svc in services_raw.items():
        for key, value in environment(svc).items():
            if SECRET_NAME.search(key):
                m = _REQUIRED_VAR.fullmatch(value)
                if not m:
                    problems.append(f"{name}: {key} is a literal or has a default, "
                                    f"not a required ${{VAR}}: {value!r}")
                elif "change-me" not in env.get(m[1], ""):
                    problems.append(f".env.example: {m[1]} is not a change-me placeholder")
    for s in strings(compose):
        if _URI_WITH_PASSWORD.search(s):
            problems.append(f"credentials in a URI: {s!r}")
    for name, svc in compose["services"].items():
        for part in ("command", "entrypoint", "healthcheck"):
            for s in strings(svc.get(part)):
                if _SECRET_ASSIGNMENT.search(s):
                    problems.append(f"{name}: a secret in its {part}: {s!r}")
    for key, value in env.items():
        if SECRET_NAME.search(key) and value and value in text:
            problems.append(f"the value of {key} is hard-coded in compose.yaml")

    # the header tells how to bring the cluster up and run a study
    for needed in ("docker compose -f docker/compose.yaml up -d",
                   ("exec ray-head pitfalls run studies/quickstart.yaml --address auto "
                    "--storage /shared/runs --mlflow-uri http://mlflow:5000")):
        if needed not in text:
            problems.append(f"the header does not show {needed!r}")
    return problems


def test_compose_file():
    assert compose_problems(read("compose.yaml")) == []


def test_env_example_is_for_local_use_only():
    text = read(".env.example")
    assert "local" in text.lower() and "never commit" in text.lower()
    env = env_example(text)
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "MINIO_ROOT_USER",
            "MINIO_ROOT_PASSWORD", "RAY_AUTH_TOKEN", "PITFALLS_IMAGE"} <= set(env)


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('"127.0.0.1:${MLFLOW_PORT:-5000}:5000"', '"0.0.0.0:${MLFLOW_PORT:-5000}:5000"', "127.0.0.1"),
    ('"127.0.0.1:${RAY_DASHBOARD_PORT:-8265}:8265"', '"${RAY_DASHBOARD_PORT:-8265}:8265"',
     "127.0.0.1"),
    ('"127.0.0.1:${MINIO_API_PORT:-9000}:9000"', "9000", "127.0.0.1"),
    ("PGPASSWORD: ${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in docker/.env}",
     "PGPASSWORD: hunter2hunter2", "literal"),
    ("MINIO_ROOT_PASSWORD: ${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD in docker/.env}",
     "MINIO_ROOT_PASSWORD: ${MINIO_ROOT_PASSWORD:-minio123}", "default"),
    ("postgresql://${POSTGRES_USER:-mlflow}@postgres",
     "postgresql://${POSTGRES_USER:-mlflow}:${POSTGRES_PASSWORD}@postgres", "URI"),
    ("RAY_AUTH_MODE: token", "RAY_AUTH_MODE: disabled", "RAY_AUTH_MODE"),
    ("      - --head\n", "", "--head"),
    ("driver: nvidia", "driver: cdi", "GPU"),
    ("    - shared:/shared", "    - shared:/data", SHARED),
    ("- s3://mlflow/", "- /tmp/artifacts", "artifacts-destination"),
    ("MLFLOW_SERVER_ALLOWED_HOSTS: mlflow,mlflow:5000,", "MLFLOW_SERVER_ALLOWED_HOSTS: ",
     "ALLOWED_HOSTS"),
    ("${MLFLOW_PORT:-5000}", "${UNDOCUMENTED_PORT:-5000}", ".env.example"),
])
def test_compose_checks_can_fail(old, new, expected):
    text = read("compose.yaml")
    assert old in text
    problems = compose_problems(text.replace(old, new, 1))
    assert any(expected in p for p in problems), problems


def _docker_compose_available() -> tuple[bool, str]:
    docker = shutil.which("docker")
    if not docker:
        return False, "no docker client on PATH"
    try:
        r = subprocess.run([docker, "compose", "version"], check=False, capture_output=True,
                           text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"`docker compose version` failed: {e}"
    if r.returncode != 0:
        first = ((r.stderr or r.stdout).strip().splitlines() or [""])[0]
        return False, (f"`docker compose version` exited {r.returncode}, the compose plugin is "
                       f"not installed ({first})")
    return True, r.stdout.strip()


def test_compose_config_with_docker_client():
    """`docker compose config` (needs the client and its compose plugin, not the engine)."""
    ok, why = _docker_compose_available()
    if not ok:
        pytest.skip(why)
    r = subprocess.run(
        ["docker", "compose", "-f", "docker/compose.yaml", "--env-file", "docker/.env.example",
         "config"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# ----------------------------------------------------------------------------- cluster.yaml


@functools.cache
def ray_schema() -> dict:
    """The `ray up` JSON schema shipped inside the installed ray package (ray is not imported)."""
    spec = importlib.util.find_spec("ray")
    assert spec and spec.submodule_search_locations, "ray is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def cluster_problems(text: str) -> list[str]:
    jsonschema = pytest.importorskip("jsonschema")
    problems = []
    cfg = yaml.safe_load(text)
    validator = jsonschema.Draft7Validator(ray_schema())
    for err in sorted(validator.iter_errors(cfg), key=lambda e: list(e.path)):
        problems.append(f"schema: {'/'.join(map(str, err.path)) or '(top)'}: {err.message}")

    provider = cfg.get("provider") or {}
    if provider.get("type") == "local":
        # mirrors ray.autoscaler._private.local.config.prepare_local, which `ray up` runs
        if "coordinator_address" not in provider and not (
                provider.get("head_ip") and provider.get("worker_ips") is not None):
            problems.append("local provider without head_ip and worker_ips")
        for field in ("head_node", "worker_nodes", "available_node_types"):
            if cfg.get(field):
                problems.append(f"{field} is not supported by the local provider")
    elif not cfg.get("available_node_types"):
        problems.append(f"provider {provider.get('type')!r} without available_node_types")

    docker = cfg.get("docker") or {}
    image = docker.get("image", "")
    if image != image_name() and not image.endswith("/" + image_name()):
        problems.append(f"docker.image is {image!r}, not {image_name()!r}")
    run_options = " ".join(docker.get("run_options") or [])
    if f"-v {SHARED}:{SHARED}" not in run_options:
        problems.append(f"the containers do not mount {SHARED} at the same path")
    if "--gpus" not in run_options and "--runtime=nvidia" not in run_options:
        problems.append("the containers get no GPUs (--gpus)")
    if not any(str(k).endswith("/.ray/auth_token") for k in (cfg.get("file_mounts") or {})):
        problems.append("no file mount puts the Ray token at ~/.ray/auth_token")

    for key, role in (("head_start_ray_commands", "--head"),
                      ("worker_start_ray_commands", "--address=")):
        cmds = [str(c) for c in cfg.get(key) or []]
        starts = [c for c in cmds if "ray start" in c]
        if not starts or not any(role in c for c in starts):
            problems.append(f"{key} has no `ray start {role}...`")
        for c in cmds:
            if re.search(r"\bray\s", c) and not re.search(
                    r"export RAY_AUTH_MODE=token\b.*\bray\s", c):
                problems.append(f"{key}: RAY_AUTH_MODE=token is not exported before: {c}")
    for c in cfg.get("head_start_ray_commands") or []:
        if "ray start" in str(c) and "--dashboard-host=127.0.0.1" not in str(c):
            problems.append("the head's dashboard is not bound to 127.0.0.1")
    all_cmds = " ".join(str(c) for k, v in cfg.items() if k.endswith("commands") for c in v or [])
    if re.search(r"RAY_AUTH_TOKEN=\S", all_cmds):
        problems.append("a Ray token on a command line")
    return problems


def test_cluster_yaml():
    assert cluster_problems(read("cluster.yaml")) == []


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("export RAY_AUTH_MODE=token && ulimit -n 65536; ray start --head",
     "ulimit -n 65536; ray start --head", "RAY_AUTH_MODE"),
    ("export RAY_AUTH_MODE=token && ulimit -n 65536; ray start --address",
     "ulimit -n 65536; ray start --address", "RAY_AUTH_MODE"),
    ("image: pitfalls:0.1.0", "image: rayproject/ray:latest-gpu", "docker.image"),
    ("cluster_name: pitfalls\n", "cluster_name: pitfalls\nnot_a_ray_field: 1\n", "schema"),
    ("  pull_before_run: false", "  pull_before_run: nope", "schema"),
    ("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0", "127.0.0.1"),
    ("    - -v /shared:/shared", "    - -v /data:/shared", SHARED),
    ("provider:\n", "available_node_types: {x: {node_config: {}, resources: {}}}\nprovider:\n",
     "local provider"),
])
def test_cluster_checks_can_fail(old, new, expected):
    text = read("cluster.yaml")
    assert old in text
    problems = cluster_problems(text.replace(old, new, 1))
    assert any(expected in p for p in problems), problems


# ----------------------------------------------------------------------------- rayjob.yaml


def ray_version() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [m[1] for d in deps if (m := re.match(r"ray(?:\[[^\]]*\])?==([\w.]+)", d))]
    assert pins, "ray is not pinned in pyproject.toml"
    return pins[0]


def pod_problems(where: str, pod: dict, *, shared: bool) -> list[str]:
    problems = []
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    if not containers:
        return [f"{where}: no containers"]
    c = containers[0]
    image = c.get("image", "")
    if image != image_name() and not image.endswith("/" + image_name()):
        problems.append(f"{where}: image {image!r}, not {image_name()!r}")
    env = {e.get("name"): e for e in c.get("env") or []}
    if (env.get("RAY_AUTH_MODE") or {}).get("value") != "token":
        problems.append(f"{where}: RAY_AUTH_MODE is not token")
    token = env.get("RAY_AUTH_TOKEN") or {}
    ref = (token.get("valueFrom") or {}).get("secretKeyRef") or {}
    if "value" in token or not (ref.get("name") and ref.get("key")):
        problems.append(f"{where}: RAY_AUTH_TOKEN does not come from a secretKeyRef")
    if shared:
        mounted = {m.get("mountPath"): m.get("name") for m in c.get("volumeMounts") or []}
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        name = mounted.get(SHARED)
        if not name or "persistentVolumeClaim" not in (volumes.get(name) or {}):
            problems.append(f"{where}: no PVC mounted at {SHARED}")
    if (spec.get("securityContext") or {}).get("runAsUser") == 0:
        problems.append(f"{where}: runs as root")
    return problems


def rayjob_problems(text: str) -> list[str]:
    docs = [d for d in yaml.safe_load_all(text) if d]
    jobs = [d for d in docs if d.get("kind") == "RayJob"]
    if len(jobs) != 1:
        return [f"expected one RayJob, found {len(jobs)}"]
    job = jobs[0]
    problems = []
    if job.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion {job.get('apiVersion')!r}, not ray.io/v1")
    spec = job.get("spec") or {}
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("shutdownAfterJobFinishes is not true")
    if not isinstance(spec.get("ttlSecondsAfterFinished"), int) or spec["ttlSecondsAfterFinished"] < 0:
        problems.append("ttlSecondsAfterFinished is not set")

    cluster = spec.get("rayClusterSpec") or {}
    if str(cluster.get("rayVersion")) != ray_version():
        problems.append(f"rayVersion {cluster.get('rayVersion')!r}, not {ray_version()}")
    head = (cluster.get("headGroupSpec") or {}).get("template") or {}
    problems += pod_problems("head", head, shared=True)
    groups = cluster.get("workerGroupSpecs") or []
    if not groups:
        problems.append("no workerGroupSpecs")
    gpus = 0
    for g in groups:
        pod = g.get("template") or {}
        problems += pod_problems(f"worker group {g.get('groupName')}", pod, shared=True)
        for c in (pod.get("spec") or {}).get("containers") or []:
            res = c.get("resources") or {}
            limit = (res.get("limits") or {}).get("nvidia.com/gpu")
            gpus += int(float(limit or 0))
            request = (res.get("requests") or {}).get("nvidia.com/gpu")
            if request is not None and str(request) != str(limit):
                problems.append("nvidia.com/gpu requests differ from limits")
    if not gpus:
        problems.append("no worker group requests nvidia.com/gpu (resources.limits)")
    if spec.get("submitterPodTemplate"):  # `ray job submit` needs the token too
        problems += pod_problems("submitter", spec["submitterPodTemplate"], shared=False)

    args = shlex.split(spec.get("entrypoint") or "")
    if args[:2] != ["pitfalls", "run"] or len(args) < 3:
        problems.append(f"the entrypoint does not run `pitfalls run STUDY`: {args}")
    else:
        study = Path(args[2])
        if study.is_absolute():
            study = study.relative_to("/app")  # the image's WORKDIR holds the repository files
        if not (ROOT / study).is_file():
            problems.append(f"the entrypoint's study {args[2]} is not in the repository")
    if option(args, "--address") != "auto":
        problems.append("the entrypoint does not join the cluster (--address auto)")
    if option(args, "--storage") != f"{SHARED}/runs":
        problems.append(f"the entrypoint's --storage is not {SHARED}/runs")
    head_env = {e.get("name"): e.get("value")
                for e in ((head.get("spec") or {}).get("containers") or [{}])[0].get("env") or []}
    uri = option(args, "--mlflow-uri")
    if not uri or uri != head_env.get("MLFLOW_TRACKING_URI"):
        problems.append("--mlflow-uri is not the head's MLFLOW_TRACKING_URI")

    claims = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "PersistentVolumeClaim"}
    for pod in [head] + [g.get("template") or {} for g in groups]:
        for v in (pod.get("spec") or {}).get("volumes") or []:
            claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
            if claim in claims and "ReadWriteMany" not in claims[claim]["spec"].get("accessModes", []):
                problems.append(f"PVC {claim} is not ReadWriteMany")
    return problems


def test_rayjob_yaml():
    assert rayjob_problems(read("rayjob.yaml")) == []


_HEAD_TOKEN = """                - name: RAY_AUTH_TOKEN
                  valueFrom:
                    secretKeyRef: {name: pitfalls-ray-token, key: auth_token}
"""


@pytest.mark.parametrize(("old", "new", "expected", "count"), [
    ("kind: RayJob", "kind: RayCluster", "one RayJob", 1),
    ("apiVersion: ray.io/v1\n", "apiVersion: ray.io/v1alpha1\n", "apiVersion", 1),
    (_HEAD_TOKEN, "                - name: RAY_AUTH_TOKEN\n                  value: not-a-secret\n",
     "secretKeyRef", 1),
    (', nvidia.com/gpu: "1"}', "}", "nvidia.com/gpu", -1),
    ("shutdownAfterJobFinishes: true", "shutdownAfterJobFinishes: false", "shutdown", 1),
    ("- {name: shared, mountPath: /shared}", "- {name: shared, mountPath: /data}", SHARED, 1),
    ("--storage /shared/runs", "--storage runs", "storage", 1),
    ("--mlflow-uri http://mlflow:5000", "--mlflow-uri http://127.0.0.1:5000", "mlflow", 1),
    ("studies/quickstart.yaml", "studies/no_such_study.yaml", "not in the repository", 1),
    ("accessModes: [ReadWriteMany]", "accessModes: [ReadWriteOnce]", "ReadWriteMany", 1),
])
def test_rayjob_checks_can_fail(old, new, expected, count):
    text = read("rayjob.yaml")
    assert old in text
    problems = rayjob_problems(text.replace(old, new, count))
    assert any(expected in p for p in problems), problems
