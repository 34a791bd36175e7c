"""Ray Tune driver, trials (in-process or Ray Train DDP), MLflow tracking."""

import os

# Ray (2.60) re-creates a `uv run` driver's environment for every worker: it zips the working
# directory and builds a fresh .venv per worker session, so workers run a snapshot of the code
# and start slowly. Workers started from this environment's Python need none of that. Must be
# set before `ray` is imported (Ray reads it at import); export RAY_ENABLE_UV_RUN_RUNTIME_ENV=1
# to ship the uv environment to a cluster whose nodes lack the package.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
