"""The versioned per-trial result schema (one row per trial), derived from the declarations:
parameter columns from `TrialParams`, metric columns from the metric registry, probe columns
from the probe registry. Changing any of them changes the schema: bump `SCHEMA_VERSION` and
record the new column list's fingerprint (`tests/unit/test_registries.py` says so)."""

from __future__ import annotations

import pyarrow as pa

from pitfalls.config.metrics import LOWER_IS_BETTER, RESULT_METRICS, TEST_METRICS
from pitfalls.config.params import PARAMS, TYPES
from pitfalls.models.pretrained import REINIT_COUNT, REINIT_KEY
from pitfalls.probes.registry import COLUMNS as PROBES

# 8: reinit_norms and reinit_norm_layers (pretrained weights: the norm layers that started from
# scratch); 7: the training mode (training) and the optimization options (optimizer, momentum, agc_clip,
# class_weights); 6: test_* metrics and selected_epoch (the test split at the checkpoint selected on validation)
# and the scoring protocols' val_ metrics; 5: backbone and temporal_head columns (they became
# trial parameters); 4: the cheat gap (evaluation.cheat_gap) and precise_bn; 3: anticipation
# metrics; 2: probe columns.
SCHEMA_VERSION = "8"
METRICS = RESULT_METRICS  # phase metrics, anticipation metrics (minutes), losses, the cheat gap
_ARROW = {str: pa.string(), int: pa.int64(), bool: pa.bool_(), float: pa.float64()}
PARAM_FIELDS = [pa.field(name, _ARROW[TYPES[name]]) for name in PARAMS]
SCHEMA = pa.schema(
    [
        pa.field("study", pa.string()),
        pa.field("trial_id", pa.string()),
        pa.field("status", pa.string()),  # "completed" | "failed"
        pa.field("error", pa.string()),
        *PARAM_FIELDS,
        pa.field("epochs", pa.int64()),
        *[pa.field(f"final_{m}", pa.float64()) for m in METRICS],
        *[pa.field(f"best_{m}", pa.float64()) for m in METRICS],
        *[pa.field(f"curve_{m}", pa.list_(pa.float64())) for m in METRICS],
        *[pa.field(m, pa.int64() if m == "selected_epoch" else pa.float64()) for m in TEST_METRICS],
        *[pa.field(name, pa.float64()) for name in PROBES],
        pa.field(REINIT_COUNT, pa.int64()),  # null: no pretrained weights loaded
        pa.field(REINIT_KEY, pa.string()),  # their names, ", "-separated
        pa.field("duration_s", pa.float64()),
        pa.field("workers", pa.int64()),
    ],
    metadata={"pitfalls.schema_version": SCHEMA_VERSION},
)
PARAM_NAMES = [f.name for f in PARAM_FIELDS]


def metric_column(metric: str) -> str:
    """The column a comparison by `metric` reads: a test metric's own (measured once, at the
    selected checkpoint), else the metric at the last epoch (`final_`)."""
    return metric if metric in TEST_METRICS else f"final_{metric}"


def companion_metric(metric: str) -> str | None:
    """The same score on the other split, shown next to it: `val_x` <-> `test_x`."""
    for a, b in (("val_", "test_"), ("test_", "val_")):
        if metric.startswith(a) and b + metric[len(a):] in (*TEST_METRICS, *METRICS):
            return b + metric[len(a):]
    return None


def metric_when(metric: str) -> str:
    """How a report says where the compared number comes from."""
    return "on the test split, at the checkpoint selected on validation" if metric in TEST_METRICS \
        else "at the last epoch"
# Values of columns added since older versions, where "absent" had a meaning (else null).
UPGRADE_DEFAULTS = {n: p.upgrade for n, p in PARAMS.items() if p.upgrade is not None}

__all__ = ["LOWER_IS_BETTER", "METRICS", "TEST_METRICS", "PARAM_FIELDS", "PARAM_NAMES", "PROBES", "SCHEMA",
           "SCHEMA_VERSION", "UPGRADE_DEFAULTS", "companion_metric", "metric_column", "metric_when"]
