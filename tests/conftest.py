"""Shared fixtures: one Ray instance per test session, a real MLflow server on 127.0.0.1 (sqlite
or PostgreSQL backend), a throwaway PostgreSQL server."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One local Ray for the whole session (started the way `pitfalls run` starts it)."""
    ray = pytest.importorskip("ray")
    from pitfalls.sweep.runtime import init_ray

    init_ray(None, tmp_path_factory.mktemp("ray") / "ray.log")
    yield ray
    ray.shutdown()


@pytest.fixture
def unreachable() -> str:
    """An http URI on a port of 127.0.0.1 nothing listens on (connections are refused)."""
    return f"http://127.0.0.1:{_free_port()}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` process on 127.0.0.1 (one worker, no job runner: ~20 s to healthy
    on 2 cores). `stop()` and `start()` again keep the port and the backend store.

    The backend store URI goes to the server through `MLFLOW_BACKEND_STORE_URI`, not its command
    line, so a database password in it is not shown by `ps`.
    """

    def __init__(self, root: Path, backend_store_uri: str, port: int | None = None):
        self.root = root
        self.backend_store_uri = backend_store_uri
        self.port = port or _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "server.log"
        self.proc: subprocess.Popen | None = None

    def launch(self) -> None:
        """Start the server process; `wait()` for it to answer."""
        exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "MLFLOW_BACKEND_STORE_URI": self.backend_store_uri}
        self.launched = time.monotonic()
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [exe, "server", "--artifacts-destination", str(self.root / "artifacts"),
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait(self, timeout_s: float = 120) -> float:
        """Wait until /health answers; return the seconds since the launch."""
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - self.launched
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() - self.launched > timeout_s:
                self.stop()
                raise RuntimeError(f"mlflow server did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.25)

    def start(self, timeout_s: float = 120) -> float:
        """Start the server and wait until /health answers; return the seconds it took."""
        self.launch()
        return self.wait(timeout_s)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server and every process it started (its own process group)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)
        self.proc = None


# Servers the collected tests need are launched as soon as collection is done, so that their
# start-up (~20 s each on 2 cores) overlaps the tests that run before their first user.
_EARLY: dict[str, object] = {}


def pytest_collection_finish(session) -> None:
    used = {f for item in session.items for f in getattr(item, "fixturenames", ())}
    if used & {"mlflow_server", "mlflow_server_process"}:
        root = Path(tempfile.mkdtemp(prefix="pitfalls-mlflow-"))
        server = MlflowServer(root, f"sqlite:///{root / 'mlflow.db'}")
        server.launch()
        _EARLY["mlflow"] = server
    if used & {"postgres", "postgres_url", "mlflow_postgres_server"}:
        _EARLY["postgres"] = _Background(_start_postgres, "mlflow_postgres_server" in used)


class _Background(threading.Thread):
    """A function run in a thread; `result()` joins it and returns (or raises) what it did."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args, self.value, self.error = fn, args, None, None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.fn(*self.args)
        except BaseException as e:  # noqa: BLE001 - re-raised by result()
            self.error = e

    def result(self):
        self.join()
        if self.error is not None:
            raise self.error
        return self.value


@pytest.fixture(scope="session")
def mlflow_server_process(tmp_path_factory):
    """The session's real `mlflow server` process (sqlite backend): one start (~20 s on 2
    cores, launched when collection ends) for every test that needs a server. A test may stop
    and restart it (an outage); it must leave it running."""
    server = _EARLY.pop("mlflow", None)
    if server is None:
        root = tmp_path_factory.mktemp("mlflow-server")
        server = MlflowServer(root, f"sqlite:///{root / 'mlflow.db'}")
        server.launch()
    server.wait()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_process):
    """The session's MLflow server's URI."""
    return mlflow_server_process.uri


# --- a throwaway PostgreSQL server -------------------------------------------------------------

#: SQLAlchemy URL scheme for PostgreSQL with the psycopg2 driver (the project's dependency);
#: MLflow's server and Optuna's RDBStorage both take it.
PG_SCHEME = "postgresql+psycopg2"
PG_USER = "pitfalls"


@dataclass(frozen=True)
class Postgres:
    """A running throwaway PostgreSQL: `url(db)` is a SQLAlchemy URL with the password in it."""

    host: str
    port: int
    user: str
    password: str
    databases: tuple[str, ...]

    def url(self, database: str, *, with_password: bool = True) -> str:
        auth = f"{self.user}:{self.password}" if with_password else self.user
        return f"{PG_SCHEME}://{auth}@{self.host}:{self.port}/{database}"


def postgres_bin_dir() -> Path | None:
    """The newest Debian PostgreSQL server binaries (/usr/lib/postgresql/<v>/bin), else the
    directory of an `initdb` on PATH; None when PostgreSQL is not installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class _Unavailable(Exception):
    """No PostgreSQL server can be run here (the reason is the message)."""


@dataclass
class _Started:
    postgres: Postgres
    stop: object  # () -> None
    mlflow: "MlflowServer | None" = None  # an MLflow server on it, launched (not yet waited for)


def _start_postgres(with_mlflow: bool) -> _Started:
    """`initdb` into a temporary directory, start it with `pg_ctl` on a free port on 127.0.0.1
    (password auth over TCP), create the databases `mlflow` and `optuna`; and, if asked, launch
    an MLflow server on the `mlflow` database. As root it runs as the `postgres` system user
    (PostgreSQL refuses to run as root)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise _Unavailable("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin or "
                           "initdb on PATH); install Debian's `postgresql` package (.ci/run does)")
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise _Unavailable("running as root and there is no `postgres` system user to run "
                               "PostgreSQL as (Debian's `postgresql` package creates it)") from None
        as_user = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="pitfalls-pg-"))  # not under pytest's root-only tmp dir
    data = base / "data"
    if as_user:
        os.chown(base, pw.pw_uid, pw.pw_gid)
    password = "pw-" + secrets.token_hex(12)
    (base / "pwfile").write_text(password + "\n")
    if as_user:
        os.chown(base / "pwfile", pw.pw_uid, pw.pw_gid)
    port = _free_port()

    def run(*cmd: str) -> None:
        proc = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                               f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")

    def stop() -> None:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={base / 'pwfile'}",
            "--auth-host=scram-sha-256", "--auth-local=trust", "--encoding=UTF8",
            "--no-sync", "--no-instructions")
        (base / "pwfile").unlink()
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "postgres.log"), "-w",
            "-t", "60", "-o", f"-p {port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={base} -c fsync=off -c full_page_writes=off "
            f"-c synchronous_commit=off", "start")
    except BaseException:
        stop()
        raise
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=port, user=PG_USER, password=password,
                            dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        for db in ("mlflow", "optuna"):
            cur.execute(f"CREATE DATABASE {db}")
    conn.close()
    started = _Started(Postgres("127.0.0.1", port, PG_USER, password, ("mlflow", "optuna")), stop)
    if with_mlflow:
        root = Path(tempfile.mkdtemp(prefix="pitfalls-mlflow-pg-"))
        started.mlflow = MlflowServer(root, started.postgres.url("mlflow"))
        started.mlflow.launch()
    return started


@pytest.fixture(scope="session")
def _postgres_started():
    # .ci/run sets PITFALLS_REQUIRE_POSTGRES=1: there a missing server fails instead of skipping
    unavailable = pytest.fail if os.environ.get("PITFALLS_REQUIRE_POSTGRES") == "1" else pytest.skip
    early = _EARLY.pop("postgres", None)
    try:
        started = early.result() if early is not None else _start_postgres(False)
    except _Unavailable as e:
        unavailable(str(e))
    yield started
    if started.mlflow is not None:
        started.mlflow.stop()
    started.stop()


@pytest.fixture(scope="session")
def postgres(_postgres_started) -> Postgres:
    """A PostgreSQL server for this test session (see `_start_postgres`), with the databases
    `mlflow` and `optuna`; stopped and deleted at the end."""
    return _postgres_started.postgres


@pytest.fixture(scope="session")
def postgres_url(postgres) -> str:
    """SQLAlchemy URL of the throwaway PostgreSQL's `optuna` database (password included)."""
    return postgres.url("optuna")


@pytest.fixture(scope="session")
def mlflow_postgres_server(tmp_path_factory, _postgres_started):
    """A real `mlflow server` whose backend store is the throwaway PostgreSQL's `mlflow`
    database (a password in the URL, given through the environment)."""
    server = _postgres_started.mlflow
    if server is None:
        root = tmp_path_factory.mktemp("mlflow-pg-server")
        server = MlflowServer(root, _postgres_started.postgres.url("mlflow"))
        server.launch()
        _postgres_started.mlflow = server
    server.wait(timeout_s=180)
    return server


@dataclass(frozen=True)
class S3Server:
    """An S3-compatible server (moto, a real HTTP server process thread) with one bucket."""

    endpoint: str  # host:port
    bucket: str
    env: dict  # credentials as every node would get them: environment variables

    def uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}?endpoint_override={self.endpoint}&scheme=http"


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1; credentials only in the environment, as in production."""
    from moto.server import ThreadedMotoServer

    env = {"AWS_ACCESS_KEY_ID": "pitfalls-test", "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    import boto3

    boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="pitfalls")
    yield S3Server(f"{host}:{port}", "pitfalls", env)
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def pytest_unconfigure(config) -> None:
    """Kill child processes a failed test left behind: Python's exit waits for non-daemon
    `multiprocessing` children, so one hung child would otherwise stall the whole run."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
        child.join(5)
