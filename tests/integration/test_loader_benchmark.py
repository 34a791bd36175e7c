"""benchmarks/loader.py --quick end to end (~15-20 s on 2 cores: torch, timm, a process pool)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_loader_benchmark_quick_prints_its_figures():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loader.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "identical stores: True" in out
    for row in ("JPEG decode+resize", "packed store read"):
        m = re.search(rf"\| {re.escape(row)} +\| +(\d+) \| +(\d+) \| +([\d.]+)x \|", out)
        assert m and all(float(g) > 0 for g in m.groups()), out
    m = re.search(r"\| training consumes +\| +\| +([\d.]+) \|", out)
    assert m and float(m.group(1)) > 0, out
    assert re.search(r"machine: \d+ CPUs .*torch .*device cpu|device cuda", out), out
