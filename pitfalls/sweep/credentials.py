"""Credentials inside a URI go to the environment, and only the clean URI goes further.

A study stores its tracking URI in `state.json` (uploaded to the bucket of a study on object
storage), prints it, and hands it to every trial inside Ray's pickles (`tune/*.pkl`); Tune
pickles Optuna's storage URL with the searcher. So at the entry points (`pitfalls.cli`,
`run_study`, `resume_study`) the credentials of a URI move to the environment variables its
client reads, and nothing downstream ever sees them:

- MLflow tracking server (`http(s)://user:password@host`): `MLFLOW_TRACKING_USERNAME` and
  `MLFLOW_TRACKING_PASSWORD`, which MLflow's REST client reads for every request (basic auth,
  `mlflow.utils.credentials.get_default_host_creds`); the URI keeps no user info at all.
- PostgreSQL through libpq (`postgresql://`, `postgresql+psycopg2://`, `+psycopg`,
  `+psycopg2cffi`; asyncpg reads the same variable): the password to `PGPASSWORD`, both for
  MLflow's SQL store and Optuna's storage. The user name stays in the URI: it is not a secret,
  and the MLflow and Optuna databases may belong to different roles (one PGUSER could not serve
  both).
- Any other password (MySQL, MSSQL, SQLite has none, PostgreSQL through pg8000, which ignores
  PGPASSWORD): refused, since no variable our drivers read could carry it.

Environment variables are process-wide and every trial inherits them, so a variable that is
already set to another value is refused rather than overwritten: the URI winning would silently
change the password of another connection (MLflow's store and Optuna's storage share
PGPASSWORD), and the failure would show much later, as an authentication error in a trial.

No Ray, MLflow or SQLAlchemy import here: plain string handling.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
OPTUNA_STORAGE_ENV = "PITFALLS_OPTUNA_STORAGE"
MLFLOW_USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
MLFLOW_PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
PG_PASSWORD_ENV = "PGPASSWORD"
#: SQLAlchemy's PostgreSQL drivers that read PGPASSWORD ("" is SQLAlchemy's default, psycopg2)
PG_ENV_DRIVERS = ("", "psycopg2", "psycopg", "psycopg2cffi", "asyncpg")
MASK = "***"
_PASSWORD_KEYS = ("password", "passwd")  # query parameters that SQLAlchemy hands the driver

# //user:password@, the password up to the last @ before a space or quote (over-masks rather
# than leave the tail of a password that holds an unencoded @)
_USERINFO = re.compile(r"//([^/:@\s'\"]*):[^\s'\"]*@")
_QUERY_PASSWORD = re.compile(r"([?&](?:password|passwd)=)[^&#\s]*", re.IGNORECASE)


class CredentialsError(ValueError):
    """A URI carries a password that cannot be moved out of it (one line, password masked)."""


def redact(text: str) -> str:
    """`text` with every URI's password masked: `//user:***@host`, `?password=***`."""
    return _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", _USERINFO.sub(rf"//\g<1>:{MASK}@", text))


def _masked(uri: str) -> str:
    """`uri` for a message: the password of its user info and query masked, whatever it holds."""
    parts = urlsplit(uri)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    netloc = f"{user}{colon and ':' + MASK}@{hostport}" if at else hostport
    query = "&".join(f"{key}={MASK}" if key.lower() in _PASSWORD_KEYS else item
                     for item in parts.query.split("&") for key in [item.partition("=")[0]])
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def split_credentials(uri: str) -> tuple[str, dict[str, str]]:
    """(`uri` without its credentials, the environment variables that carry them instead).

    A URI without a password comes back unchanged (an http(s) URI also loses a bare user
    name, which MLflow takes from MLFLOW_TRACKING_USERNAME only). Raises `CredentialsError` for
    a password no environment variable of its driver can carry.
    """
    if "://" not in uri:
        return uri, {}
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    userinfo, at, hostport = parts.netloc.rpartition("@")
    raw_user, _, password = userinfo.partition(":")
    user, password = unquote(raw_user), unquote(password)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query_password = [v for k, v in query if k.lower() in _PASSWORD_KEYS]
    if scheme in ("http", "https"):
        if not at:
            return uri, {}
        env = {MLFLOW_USERNAME_ENV: user} if user else {}
        if password:
            env[MLFLOW_PASSWORD_ENV] = password
        return urlunsplit(parts._replace(netloc=hostport)), env
    if not (password or any(query_password)):
        return uri, {}
    dialect, _, driver = scheme.partition("+")
    if dialect == "postgresql" and driver in PG_ENV_DRIVERS:
        secrets = {p for p in [password, *query_password] if p}
        if len(secrets) > 1:
            raise CredentialsError(f"{_masked(uri)}: two different passwords (in the user info and "
                                   "in the query); give one, through PGPASSWORD")
        netloc = f"{raw_user}@{hostport}" if at else hostport
        rest = urlencode([(k, v) for k, v in query if k.lower() not in _PASSWORD_KEYS]
                         ) if query_password else parts.query
        return (urlunsplit(parts._replace(netloc=netloc, query=rest)),
                {PG_PASSWORD_ENV: secrets.pop()} if secrets else {})
    raise CredentialsError(
        f"{_masked(uri)}: a password in a {scheme}:// URI would be stored in the study's state "
        "and in Ray's pickles, and no environment variable its driver reads can carry it; use an "
        f"MLflow tracking server (http://HOST:PORT with {MLFLOW_USERNAME_ENV}/{MLFLOW_PASSWORD_ENV}) "
        f"or PostgreSQL through psycopg2 (postgresql+psycopg2://USER@HOST/DB with {PG_PASSWORD_ENV} "
        "or ~/.pgpass)")


def move_credentials(uri: str | None, environ: MutableMapping[str, str] | None = None) -> str | None:
    """`uri` without credentials, which are set in `environ` (default: this process's
    environment, inherited by a local Ray's workers). Refuses (`CredentialsError`) a variable
    already set to another value. None stays None."""
    if uri is None:
        return None
    environ = os.environ if environ is None else environ
    clean, env = split_credentials(uri)
    for name, value in env.items():
        if environ.get(name) not in (None, "", value):
            raise CredentialsError(
                f"{_masked(uri)}: {name} is already set, to another value than this URI's; unset "
                f"it, or give the URI without credentials (different PostgreSQL passwords: "
                "~/.pgpass)")
    environ.update(env)
    return clean


def move_env_credentials(name: str, environ: MutableMapping[str, str] | None = None) -> None:
    """The URI in the environment variable `name`, if any, rewritten without its credentials
    (which `move_credentials` sets in their own variables)."""
    environ = os.environ if environ is None else environ
    if environ.get(name):
        try:
            environ[name] = move_credentials(environ[name], environ)
        except CredentialsError as e:
            raise CredentialsError(f"{name}={e}") from None


def study_uris(tracking_uri: str | None, optuna_storage: str | None,
               environ: MutableMapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """A study's tracking URI and Optuna storage without credentials; when one is None, its
    environment variable (`MLFLOW_TRACKING_URI`, `PITFALLS_OPTUNA_STORAGE`, the defaults the
    driver falls back to) is cleaned instead."""
    for uri, name in ((tracking_uri, TRACKING_URI_ENV), (optuna_storage, OPTUNA_STORAGE_ENV)):
        if uri is None:
            move_env_credentials(name, environ)
    return move_credentials(tracking_uri, environ), move_credentials(optuna_storage, environ)
