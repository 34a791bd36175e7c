"""Trial results -> Arrow table (versioned schema) -> Parquet; the comparison's numbers
(`analysis`), its renderings (`render_md`, `render_html`) and their files (`write`)."""

from pitfalls.results.analysis import comparison_table
from pitfalls.results.render_md import to_markdown
from pitfalls.results.schema import SCHEMA, SCHEMA_VERSION
from pitfalls.results.store import RESULTS_FILE, read_results, trial_row, write_results

__all__ = ["SCHEMA", "SCHEMA_VERSION", "RESULTS_FILE", "read_results", "trial_row",
           "write_results", "comparison_table", "to_markdown"]
