"""benchmarks/e2e_vs_timm.py and e2e_vs_reference.py --quick, on a Python that cannot import
Ray, Optuna or MLflow (a bare GPU box has torch, timm, numpy and pyarrow only). Both scripts
run in one such interpreter (torch and timm imported once)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

SCRIPTS = {"e2e_vs_timm.py": "platform / timm", "e2e_vs_reference.py": "platform / reference"}
# Block the imports the way a missing package would fail them, then run each script as __main__.
BARE = ("import runpy, sys\n"
        "for name in ('ray', 'optuna', 'mlflow'):\n"
        "    sys.modules[name] = None  # import raises ImportError\n"
        "sys.path.insert(0, {bench!r})\n"
        "for script in {scripts!r}:\n"
        "    print('=== ' + script, flush=True)\n"
        "    sys.argv = [script, '--quick']\n"
        "    runpy.run_path(script, run_name='__main__')\n")


def test_e2e_benchmarks_run_without_ray_and_print_their_ratios():
    bench = ROOT / "benchmarks"
    code = BARE.format(bench=str(bench), scripts=[str(bench / s) for s in SCRIPTS])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outputs = proc.stdout.split("=== ")[1:]
    assert [o.splitlines()[0].rsplit("/", 1)[-1] for o in outputs] == list(SCRIPTS)
    for out, ratio in zip(outputs, SCRIPTS.values()):
        assert re.search(r"device: (cpu|cuda) .*torch .*timm ", out), out
        assert "'precision': 'fp32'" in out or "'precision': 'bf16'" in out, out
        rows = re.findall(r"^\| [^|]+ \| ([\d.]+) \|", out, re.M)
        assert len(rows) == 2 and all(float(r) > 0 for r in rows), out
        m = re.search(rf"{re.escape(ratio)}: ([\d.]+)x", out)
        assert m and float(m.group(1)) > 0, out
