"""benchmarks/gpu_suite.py --smoke end to end (~20 s on 2 cores), on a Python that cannot
import Ray, Optuna or MLflow, in the suite's child processes too (a lent GPU machine has none of
them): the JSON and the Markdown hold every section, each with figures or why it has none."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

SCRIPT = ROOT / "benchmarks" / "gpu_suite.py"
# Imported first by every Python started with this folder on PYTHONPATH: the imports fail the
# way a missing package fails them.
BLOCK = ("import sys\n"
         "for name in ('ray', 'optuna', 'mlflow'):\n"
         "    sys.modules[name] = None\n")


def _sections() -> list:
    """The suite's declared sections (the module imports no torch; sys.path is left as it was)."""
    path, name = list(sys.path), "_gpu_suite_under_test"
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        return list(module.SECTIONS)
    finally:
        sys.modules.pop(name, None)
        sys.path[:] = path


def test_smoke_run_reports_every_section_without_ray(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK)
    out = tmp_path / "out"
    paths = [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), "--smoke"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_suite.json").read_text())
    md = (out / "gpu_suite.md").read_text()
    assert {"torch", "timm", "numpy", "cpu", "date"} <= set(report["machine"])
    sections = _sections()
    assert list(report["sections"]) == [s.name for s in sections]
    for s in sections:
        record = report["sections"][s.name]
        assert f"## {s.title}\n" in md
        assert record["status"] in ("ok", "skipped"), (s.name, record)
        if record["status"] == "skipped":
            assert record["reason"], s.name
            if s.cuda_only and report["machine"]["device"] == "cpu":
                assert record["reason"] == "needs CUDA"
            continue
        tables = record["tables"].values()
        assert tables and all(t["rows"] for t in tables), (s.name, record)
        assert all(isinstance(v, (int, float)) and v > 0 for t in tables for row in t["rows"]
                   for k, v in row.items() if "frames/s" in k), (s.name, record)
    assert report["sections"]["loader"]["tables"]["vs_steps"]["rows"]  # compared with (b)'s steps


def test_without_cuda_and_smoke_it_exits_with_one_error_line(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, whatever the machine has
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 2 and not proc.stdout, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: the GPU suite needs CUDA") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
