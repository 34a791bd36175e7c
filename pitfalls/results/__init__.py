"""Trial results -> Arrow table (versioned schema) -> Parquet; comparison tables."""

from pitfalls.results.schema import SCHEMA, SCHEMA_VERSION
from pitfalls.results.store import RESULTS_FILE, read_results, trial_row, write_results
from pitfalls.results.table import comparison_table, to_markdown

__all__ = ["SCHEMA", "SCHEMA_VERSION", "RESULTS_FILE", "read_results", "trial_row",
           "write_results", "comparison_table", "to_markdown"]
