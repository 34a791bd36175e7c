"""The HTML report in a real headless browser: it loads without errors and its figures render."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from pitfalls.cli import main
from pitfalls.config import parse_study
from pitfalls.results import write_results
from tests.helpers import GRID_VALUES, grid_rows, tiny_study

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser():
    if not CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail("CI must have Chromium (.ci/run installs Debian's chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return CHROMIUM


def test_html_report_renders_in_chromium(tmp_path, browser, capsys):
    raw = tiny_study(seeds=[0, 1])
    raw["search_space"]["factors"]["frozen_stages"] = [0, 1]
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    (study_dir / "study.yaml").write_text(yaml.safe_dump(parse_study(raw).to_dict(), sort_keys=False))
    write_results(study_dir / "results.parquet", grid_rows(GRID_VALUES))
    assert main(["report", str(study_dir), "--format", "html"]) == 0
    page = study_dir / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained
    assert text.count("data:image/png;base64,") == 3  # effect plot, interaction, learning curves

    profile = tmp_path / "profile"
    dom = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-2000:]
    assert 'data-figures="3/3"' in body.group(0)  # every <img> decoded with a non-zero width
    assert "data-js-error" not in body.group(0)

    shot = tmp_path / "shot.png"
    subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--window-size=1200,1600",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20_000  # a rendered page, not a blank one
