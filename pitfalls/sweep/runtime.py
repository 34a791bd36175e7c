"""Starting or joining Ray quietly: Ray's own logs go to a file in the study directory."""

from __future__ import annotations

import logging
import os
from pathlib import Path

# Read by Ray Train's controller and workers; passed to every worker through the runtime env.
RAY_ENV = {
    "RAY_TRAIN_V2_ENABLED": "1",
    "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0",  # no "Reporting training result ..."
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # no C++ object-store error per trial
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
}
DRIVER_RESOURCE = "pitfalls_trial_driver"  # lets a multi-worker trial's driver take no CPU


_handlers: dict[Path, logging.Handler] = {}


def quiet_logging(log_file: Path) -> None:
    """Route the `ray`, `mlflow`, ... loggers (and warnings) to `log_file`, off the terminal.

    Idempotent; call it again after anything that may install its own handlers (ray.init,
    a first mlflow import).
    """
    log_file = log_file.resolve()
    if log_file not in _handlers:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        _handlers[log_file] = handler
    handler = _handlers[log_file]
    for name in ("ray", "mlflow", "optuna", "alembic", "py.warnings"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.propagate = False
    logging.captureWarnings(True)


def init_ray(address: str | None, log_file: Path) -> None:
    """Start a local Ray (token auth stays on, Ray's default) or join `address`."""
    import ray

    os.environ.update(RAY_ENV)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no Tune configuration box on the terminal
    if ray.is_initialized():
        return
    quiet_logging(log_file)
    kwargs = {
        "log_to_driver": False,
        "logging_config": ray.LoggingConfig(log_level="ERROR"),
        "runtime_env": {"env_vars": dict(RAY_ENV)},
    }
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local": always a new instance; with no address Ray would join any Ray instance it
        # finds running on this machine (another user's, a stale one from a killed driver).
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 resources={DRIVER_RESOURCE: 1000}, **kwargs)
    quiet_logging(log_file)  # ray.init may have installed its own handlers


def cluster_capacity() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())
