"""Writing a study's reports: `comparison.md` and `report.html`, each appearing whole."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pitfalls.config import StudySpec
from pitfalls.fileio import atomic_write
from pitfalls.results.analysis import analysis_of_study, comparison_data
from pitfalls.results.phases import PREDICTIONS_DIR
from pitfalls.results.render_html import render_html
from pitfalls.results.render_md import comparison_markdown
from pitfalls.results.store import read_study_results

COMPARISON_FILE = "comparison.md"
REPORT_FILE = "report.html"


def write_comparison(study_dir: Path, spec: StudySpec) -> tuple[str, list[Path]]:
    """Rebuild `comparison.md` and `report.html` of a study directory from its own files."""
    results = read_study_results(study_dir)
    analysis = replace(analysis_of_study(spec), predictions=study_dir / PREDICTIONS_DIR)
    data = comparison_data(results, analysis)
    text = comparison_markdown(results, analysis, data)
    atomic_write(study_dir / COMPARISON_FILE, text)
    atomic_write(study_dir / REPORT_FILE, render_html(results, analysis, data))
    return text, [study_dir / COMPARISON_FILE, study_dir / REPORT_FILE]
