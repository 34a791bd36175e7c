"""Per-trial rows -> `results.parquet` in the study directory, rewritten atomically."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pitfalls.fileio import atomic_open
from pitfalls.results.schema import (
    LOWER_IS_BETTER,
    METRICS,
    PARAM_NAMES,
    PROBES,
    SCHEMA,
    TEST_METRICS,
    UPGRADE_DEFAULTS,
)

RESULTS_FILE = "results.parquet"


def trial_row(study: str, trial_id: str, params: dict, history: list[dict], *, status: str,
              error: str | None, duration_s: float, workers: int) -> dict:
    """One schema row from a trial's params and its per-epoch reports."""
    row = {"study": study, "trial_id": trial_id, "status": status, "error": error,
           **{k: params.get(k, UPGRADE_DEFAULTS.get(k)) for k in PARAM_NAMES},
           "epochs": len(history),
           "duration_s": duration_s, "workers": workers}
    for m in METRICS:
        curve = [float(h[m]) for h in history if m in h]
        row[f"curve_{m}"] = curve
        row[f"final_{m}"] = curve[-1] if curve else None
        row[f"best_{m}"] = (min(curve) if m in LOWER_IS_BETTER else max(curve)) if curve else None
    last = history[-1] if history else {}
    row.update({k: last.get(k) for k in PROBES})
    row.update({k: last.get(k) for k in TEST_METRICS})  # measured once, after the last epoch
    return row


def write_results(path: Path, rows: list[dict]) -> None:
    """Write all rows (one per trial id, last wins) atomically: a reader never sees half a file.
    Rows are ordered by their parameters (then trial id), not by when trials finished, so the
    same trials make the same file (and the same report) whatever the scheduling."""
    by_id = {r["trial_id"]: r for r in rows}
    ordered = sorted(by_id.values(), key=lambda r: ([repr(r.get(k)) for k in PARAM_NAMES], r["trial_id"]))
    table = pa.Table.from_pylist(ordered, schema=SCHEMA)
    with atomic_open(path) as f:
        pq.write_table(table, f)


def read_results(path: Path) -> pa.Table:
    """Read a results file of any schema version as the current schema: columns added since
    (version 2's probe columns, version 3's metrics, version 5's backbone) come back as nulls,
    `carry_hidden` as false (the only behaviour before it existed)."""
    table = pq.read_table(path)
    for field in SCHEMA:
        if field.name not in table.column_names:
            fill = UPGRADE_DEFAULTS.get(field.name)
            column = (pa.array([fill] * table.num_rows, field.type) if fill is not None
                      else pa.nulls(table.num_rows, field.type))
            table = table.append_column(field, column)
    return table.select(SCHEMA.names).replace_schema_metadata(SCHEMA.metadata)
