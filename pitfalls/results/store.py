"""Per-trial rows -> `results.parquet` in the study directory, rewritten atomically.

A running study writes each finished trial's row as a small file of its own (`results.d/`) and
folds those into `results.parquet` from time to time (`compact`): recording a trial costs the
same whatever the study's size. Readers of a study directory use `read_study_results`, which
merges the two (a row file is never older than the folded row of the same trial).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq

from pitfalls.fileio import atomic_open, atomic_write
from pitfalls.models.pretrained import REINIT_KEY, reinit_columns
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
ROWS_DIR = "results.d"  # one file per recorded trial not yet folded into RESULTS_FILE
ROW_SUFFIX = ".json"  # a row as JSON: ~4 KB and fast to write, where a 1-row Parquet file is ~40 KB


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
    # the CNN's epochs carry it (a two-stage trial's second stage trains no CNN)
    row.update(reinit_columns(next((h[REINIT_KEY] for h in history if REINIT_KEY in h), None)))
    row.update({k: last.get(k) for k in PROBES})
    row.update({k: last.get(k) for k in TEST_METRICS})  # measured once, after the last epoch
    return row


def write_results(path: Path, rows: list[dict]) -> None:
    """Write all rows (one per trial id, last wins) atomically: a reader never sees half a file.
    Rows are ordered by their parameters (then trial id), not by when trials finished, so the
    same trials make the same file (and the same report) whatever the scheduling."""
    table = _ordered_table(rows)
    with atomic_open(path) as f:
        pq.write_table(table, f)


def _ordered_table(rows: list[dict]) -> pa.Table:
    by_id = {r["trial_id"]: r for r in rows}
    ordered = sorted(by_id.values(), key=lambda r: ([repr(r.get(k)) for k in PARAM_NAMES], r["trial_id"]))
    return pa.Table.from_pylist(ordered, schema=SCHEMA)


def read_results(path: Path) -> pa.Table:
    """Read a results file of any schema version as the current schema: columns added since
    (version 2's probe columns, version 3's metrics, version 5's backbone) come back as nulls,
    `carry_hidden` as false (the only behaviour before it existed)."""
    table = pq.read_table(path)
    present = set(table.column_names)
    for field in SCHEMA:
        if field.name not in present:
            fill = UPGRADE_DEFAULTS.get(field.name)
            column = (pa.array([fill] * table.num_rows, field.type) if fill is not None
                      else pa.nulls(table.num_rows, field.type))
            table = table.append_column(field, column)
    return table.select(SCHEMA.names).replace_schema_metadata(SCHEMA.metadata)


def row_name(trial_id: str) -> str:
    """A trial's row file, relative to the study directory (also its name in a bucket)."""
    return f"{ROWS_DIR}/{quote(trial_id, safe='')}{ROW_SUFFIX}"


def _scalar(value):
    """A numpy scalar as its Python value (what JSON can hold)."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} in a result row")


def write_row(study_dir: Path, row: dict) -> str:
    """Write one trial's row as its own file, atomically (a later row of the trial replaces
    it); return its name. Constant cost, however many trials the study holds."""
    name = row_name(row["trial_id"])
    (study_dir / ROWS_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write(study_dir / name, json.dumps(row, default=_scalar))
    return name


def read_row(path: Path) -> dict:
    """A row file as a row of the current schema (columns added since it was written get
    their upgrade defaults, as in `read_results`)."""
    row = json.loads(path.read_text())
    return {f.name: row.get(f.name, UPGRADE_DEFAULTS.get(f.name)) for f in SCHEMA}


def row_files(study_dir: Path) -> list[str]:
    """The row files not folded into results.parquet yet (names relative to `study_dir`;
    an atomic write's temporary file is not one)."""
    rows = study_dir / ROWS_DIR
    if not rows.is_dir():
        return []
    return sorted(f"{ROWS_DIR}/{p.name}" for p in rows.iterdir()
                  if p.name.endswith(ROW_SUFFIX) and not p.name.startswith("."))


def compacted_rows(study_dir: Path) -> int:
    """How many rows results.parquet holds (from its footer; 0 without one)."""
    path = study_dir / RESULTS_FILE
    return pq.read_metadata(path).num_rows if path.is_file() else 0


def has_results(study_dir: Path) -> bool:
    """Whether the study directory holds any result row, folded or not."""
    return (study_dir / RESULTS_FILE).is_file() or bool(row_files(study_dir))


def _merged(study_dir: Path, names: list[str]) -> list[dict]:
    """results.parquet's rows, then the row files' (which win: a trial recorded again)."""
    path = study_dir / RESULTS_FILE
    rows = read_results(path).to_pylist() if path.is_file() else []
    return rows + [read_row(study_dir / name) for name in names]


def read_study_results(study_dir: Path) -> pa.Table:
    """Every row a study directory holds, folded or not, one per trial id (the newest wins);
    what a report or a resumed driver reads, mid-study or after."""
    names = row_files(study_dir)
    path = study_dir / RESULTS_FILE
    if not names:
        return read_results(path) if path.is_file() else SCHEMA.empty_table()
    return _ordered_table(_merged(study_dir, names))


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def compact(study_dir: Path) -> list[str]:
    """Fold the row files into results.parquet; return the row files absorbed (and removed).

    results.parquet is replaced atomically before any row file goes, and a row file rewritten
    meanwhile is kept: a kill at any point loses no row, at worst a row is in both places.
    """
    names = row_files(study_dir)
    if not names:
        return []
    stamps = {n: _stamp(study_dir / n) for n in names}
    write_results(study_dir / RESULTS_FILE, _merged(study_dir, names))
    absorbed = [n for n in names if _stamp(study_dir / n) == stamps[n]]
    for name in absorbed:
        os.unlink(study_dir / name)
    return absorbed
