"""The training core must run on a GPU box that has torch and timm but no Ray/Optuna/MLflow."""

import subprocess
import sys


def test_core_modules_import_no_ray_optuna_or_mlflow():
    code = ("import sys, pitfalls.train, pitfalls.models, pitfalls.data, pitfalls.config; "
            "print(sorted(m for m in ('ray', 'optuna', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
