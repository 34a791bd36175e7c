"""Credentials in a URI move to the environment at the entry points; a password that cannot move
is refused in one line that never shows it (pitfalls.sweep.credentials)."""

import pytest

from pitfalls.sweep.credentials import (
    CredentialsError,
    move_credentials,
    move_env_credentials,
    redact,
    split_credentials,
    study_uris,
)

SECRET = "hunter2-s3cr3t"


@pytest.mark.parametrize(("uri", "clean", "env"), [
    # MLflow tracking server: basic auth through MLflow's own variables, no user info left
    (f"http://alice:{SECRET}@mlflow:5000", "http://mlflow:5000",
     {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": SECRET}),
    ("https://alice:p%40ss%3Aw@mlflow.example/prefix/", "https://mlflow.example/prefix/",
     {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "p@ss:w"}),
    ("http://alice@mlflow:5000", "http://mlflow:5000", {"MLFLOW_TRACKING_USERNAME": "alice"}),
    # PostgreSQL (MLflow's SQL store or Optuna's storage): the password to PGPASSWORD, user kept
    ("postgresql+psycopg2://me:s3cr%40t@127.0.0.1:5433/optuna",
     "postgresql+psycopg2://me@127.0.0.1:5433/optuna", {"PGPASSWORD": "s3cr@t"}),
    (f"postgresql://me:{SECRET}@db/mlflow", "postgresql://me@db/mlflow", {"PGPASSWORD": SECRET}),
    (f"postgresql+psycopg://me:{SECRET}@db/mlflow", "postgresql+psycopg://me@db/mlflow",
     {"PGPASSWORD": SECRET}),
    ("postgresql://me:p@ss@db/x", "postgresql://me@db/x", {"PGPASSWORD": "p@ss"}),  # unencoded @
    (f"postgresql://me@db/x?sslmode=require&password={SECRET}", "postgresql://me@db/x?sslmode=require",
     {"PGPASSWORD": SECRET}),
    # nothing secret: unchanged
    ("postgresql+psycopg2://me@db:5432/optuna", "postgresql+psycopg2://me@db:5432/optuna", {}),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000", {}),
    ("sqlite:////tmp/runs/x/mlflow.db", "sqlite:////tmp/runs/x/mlflow.db", {}),
    ("databricks://profile:prefix", "databricks://profile:prefix", {}),
    ("file:///tmp/mlruns", "file:///tmp/mlruns", {}),
    ("mysql+pymysql://me@db/optuna", "mysql+pymysql://me@db/optuna", {}),
])
def test_each_scheme_splits_into_a_clean_uri_and_environment_variables(uri, clean, env):
    assert split_credentials(uri) == (clean, env)


@pytest.mark.parametrize(("uri", "named"), [
    (f"mysql+pymysql://me:{SECRET}@db/optuna", "mysql+pymysql://me:***@db/optuna"),
    (f"mssql+pyodbc://me:{SECRET}@dsn", "mssql+pyodbc://me:***@dsn"),
    # pg8000 does not read PGPASSWORD
    (f"postgresql+pg8000://me:{SECRET}@db/optuna", "postgresql+pg8000://me:***@db/optuna"),
    (f"mysql://db/optuna?password={SECRET}", "mysql://db/optuna?password=***"),
    (f"mysql://me:{SECRET} with a space@db/optuna", "mysql://me:***@db/optuna"),
])
def test_a_password_no_variable_can_carry_is_refused_without_showing_it(uri, named):
    with pytest.raises(CredentialsError) as e:
        split_credentials(uri)
    message = str(e.value)
    assert SECRET not in message and "with a space" not in message
    assert "\n" not in message
    assert message.startswith(f"{named}: ")  # the URI, its password masked
    for what in ("stored in the study's state", "Ray's pickles", "MLFLOW_TRACKING_USERNAME",
                 "MLFLOW_TRACKING_PASSWORD", "PGPASSWORD"):
        assert what in message, message


def test_two_different_postgres_passwords_in_one_uri_are_refused():
    with pytest.raises(CredentialsError, match="two different passwords") as e:
        split_credentials(f"postgresql://me:{SECRET}@db/x?password=other")
    assert SECRET not in str(e.value) and "other" not in str(e.value)


def test_redact_masks_every_password_in_a_text():
    text = (f"failed: postgresql+psycopg2://me:{SECRET}@db:5432/optuna and "
            f"'http://alice:{SECRET}@mlflow:5000/api/2.0/x' (url=mysql://u:p@ss@db/x?password={SECRET}&a=1)")
    masked = redact(text)
    assert SECRET not in masked and "p@ss" not in masked
    assert "postgresql+psycopg2://me:***@db:5432/optuna" in masked
    assert "'http://alice:***@mlflow:5000/api/2.0/x'" in masked
    assert "password=***&a=1" in masked
    assert redact("http://127.0.0.1:5000/health refused") == "http://127.0.0.1:5000/health refused"


def test_tracking_errors_are_described_with_the_password_masked():
    from pitfalls.sweep.tracking import _describe

    long = "x" * 230
    described = _describe(ConnectionError(f"{long} http://alice:{SECRET}@mlflow:5000\nsecond line"))
    assert SECRET[:4] not in described and "second line" not in described  # masked before cut


def test_credentials_move_into_the_environment():
    environ = {}
    assert move_credentials(f"http://alice:{SECRET}@mlflow:5000", environ) == "http://mlflow:5000"
    assert environ == {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": SECRET}
    assert move_credentials("http://mlflow:5000", environ) == "http://mlflow:5000"  # idempotent
    assert move_credentials(None, environ) is None


def test_the_same_value_already_set_is_fine_another_is_refused():
    """One variable serves every URI of the study and every trial: a different password already
    there would be silently overwritten (or would silently lose), so it is refused."""
    environ = {"PGPASSWORD": SECRET, "MLFLOW_TRACKING_USERNAME": "alice"}
    assert move_credentials(f"postgresql://me:{SECRET}@db/x", environ) == "postgresql://me@db/x"
    with pytest.raises(CredentialsError, match="PGPASSWORD is already set") as e:
        move_credentials("postgresql://me:other-password@db/x", environ)
    assert "other-password" not in str(e.value) and SECRET not in str(e.value)
    assert environ["PGPASSWORD"] == SECRET
    with pytest.raises(CredentialsError, match="MLFLOW_TRACKING_USERNAME is already set"):
        move_credentials(f"http://bob:{SECRET}@mlflow:5000", environ)
    assert "MLFLOW_TRACKING_PASSWORD" not in environ  # nothing set when one variable conflicts
    environ["PGPASSWORD"] = ""  # empty counts as unset
    move_credentials("postgresql://me:third@db/x", environ)
    assert environ["PGPASSWORD"] == "third"


def test_uris_in_environment_variables_are_rewritten_clean():
    environ = {"MLFLOW_TRACKING_URI": f"http://alice:{SECRET}@mlflow:5000",
               "PITFALLS_OPTUNA_STORAGE": f"postgresql://me:{SECRET}@db/optuna"}
    assert study_uris(None, None, environ) == (None, None)
    assert environ == {"MLFLOW_TRACKING_URI": "http://mlflow:5000",
                       "PITFALLS_OPTUNA_STORAGE": "postgresql://me@db/optuna",
                       "MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": SECRET,
                       "PGPASSWORD": SECRET}
    environ = {"MLFLOW_TRACKING_URI": "mysql://u:pw@db/x"}
    with pytest.raises(CredentialsError, match=r"^MLFLOW_TRACKING_URI=mysql://u:\*\*\*@db/x: "):
        move_env_credentials("MLFLOW_TRACKING_URI", environ)
    # an argument replaces its variable: the unused variable is left alone
    assert study_uris("http://other:5000", None, environ) == ("http://other:5000", None)


def test_run_study_moves_credentials_before_anything_sees_them(tmp_path, monkeypatch, capsys):
    """Library callers too: a password that cannot move is refused before anything is written;
    an unreachable server is named without the credentials, which are in the environment."""
    import os

    from pitfalls.config import parse_study
    from pitfalls.sweep.driver import StudySetupError, resume_study, run_study
    from tests.conftest import _free_port
    from tests.helpers import tiny_study

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(name, "")  # undone after the test, whatever the calls set
    spec = parse_study(tiny_study(name="creds"))
    with pytest.raises(StudySetupError, match=r"^mysql://me:\*\*\*@db/x: ") as e:
        run_study(spec, tmp_path / "creds", tracking_uri=f"mysql://me:{SECRET}@db/x")
    assert SECRET not in str(e.value)
    with pytest.raises(StudySetupError, match=r"^postgresql\+pg8000://me:\*\*\*@db/x: ") as e:
        resume_study(tmp_path / "creds", optuna_storage=f"postgresql+pg8000://me:{SECRET}@db/x")
    assert SECRET not in str(e.value)
    assert list(tmp_path.iterdir()) == []

    port = _free_port()
    with pytest.raises(StudySetupError) as e:
        run_study(spec, tmp_path / "creds", tracking_uri=f"http://alice:{SECRET}@127.0.0.1:{port}")
    assert str(e.value).startswith(f"cannot reach the MLflow tracking server at http://127.0.0.1:{port}:")
    assert SECRET not in str(e.value) and "alice" not in str(e.value)
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("alice", SECRET)
    assert SECRET not in "".join(capsys.readouterr())
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


@pytest.mark.parametrize(("argv", "env"), [
    (["run", "STUDY", "--mlflow-uri", f"mysql://me:{SECRET}@db/mlflow"], {}),
    (["run", "STUDY", "--optuna-storage", f"mysql+pymysql://me:{SECRET}@db/optuna"], {}),
    (["run", "STUDY"], {"MLFLOW_TRACKING_URI": f"mssql://me:{SECRET}@db/mlflow"}),
    (["run", "STUDY"], {"PITFALLS_OPTUNA_STORAGE": f"mysql://me:{SECRET}@db/optuna"}),
    (["resume", "DIR", "--mlflow-uri", f"mysql://me:{SECRET}@db/mlflow"], {}),
    (["resume", "DIR", "--optuna-storage", f"postgresql+pg8000://me:{SECRET}@db/optuna"], {}),
    (["report", "--mlflow-experiment", "x", "--mlflow-uri", f"mysql://me:{SECRET}@db/mlflow"], {}),
    (["reproduce", "--out", "OUT", "--mlflow-uri", f"mysql://me:{SECRET}@db/mlflow"], {}),
])
def test_cli_refuses_an_immovable_password_in_one_line(argv, env, tmp_path, monkeypatch, capsys):
    from pitfalls.cli import main

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = [{"STUDY": str(tmp_path / "s.yaml"), "DIR": str(tmp_path / "d"),
             "OUT": str(tmp_path / "out")}.get(a, a) for a in argv]
    assert main([*argv, "--storage", str(tmp_path / "runs")] if argv[0] == "run" else argv) == 2
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert out == "" and err.count("\n") == 1 and err.startswith("error: ") and "***" in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_cli_moves_movable_credentials_and_the_commands_see_clean_uris(tmp_path, monkeypatch):
    import pitfalls.cli as cli

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PGPASSWORD",
                 "PITFALLS_OPTUNA_STORAGE"):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    seen = {}
    monkeypatch.setattr(cli, "_run", lambda args: seen.update(vars(args)) or 0)  # starts nothing
    assert cli.main(["run", "s.yaml", "--mlflow-uri", f"http://alice:{SECRET}@mlflow:5000",
                     "--optuna-storage", f"postgresql+psycopg2://me:{SECRET}@db/optuna"]) == 0
    assert seen["mlflow_uri"] == "http://mlflow:5000"
    assert seen["optuna_storage"] == "postgresql+psycopg2://me@db/optuna"
    import os

    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"],
            os.environ["PGPASSWORD"]) == ("alice", SECRET, SECRET)

