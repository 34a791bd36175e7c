"""benchmarks/e2e_vs_timm.py and e2e_vs_reference.py --quick, on a Python that cannot import
Ray, Optuna or MLflow (a bare GPU box has torch, timm, numpy and pyarrow only)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

# Block the imports the way a missing package would fail them, then run the script as __main__.
BARE = ("import runpy, sys\n"
        "for name in ('ray', 'optuna', 'mlflow'):\n"
        "    sys.modules[name] = None  # import raises ImportError\n"
        "sys.argv = [{script!r}, '--quick']\n"
        "sys.path.insert(0, {bench!r})\n"
        "runpy.run_path({script!r}, run_name='__main__')\n")


@pytest.mark.parametrize("script, ratio", [("e2e_vs_timm.py", "platform / timm"),
                                           ("e2e_vs_reference.py", "platform / reference")])
def test_e2e_benchmark_runs_without_ray_and_prints_its_ratio(script, ratio):
    path = ROOT / "benchmarks" / script
    code = BARE.format(script=str(path), bench=str(path.parent))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"device: (cpu|cuda) .*torch .*timm ", out), out
    assert "'precision': 'fp32'" in out or "'precision': 'bf16'" in out, out
    rows = re.findall(r"^\| [^|]+ \| ([\d.]+) \|", out, re.M)
    assert len(rows) == 2 and all(float(r) > 0 for r in rows), out
    m = re.search(rf"{re.escape(ratio)}: ([\d.]+)x", out)
    assert m and float(m.group(1)) > 0, out
