"""The versioned per-trial result schema (one row per trial), as a pyarrow schema."""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "4"
# Phase metrics, anticipation metrics (minutes), losses; a task's absent metrics are null.
METRICS = ("val_accuracy", "val_precision", "val_recall", "val_f1", "val_jaccard",
           "val_wMAE", "val_inMAE", "val_outMAE", "val_eMAE", "val_loss", "train_loss",
           # v4: the cheat gap (evaluation.cheat_gap)
           "val_err_batchstats", "val_err_runningstats", "val_cheat_gap",
           "train_err_batchstats", "train_err_runningstats", "train_cheat_gap")
LOWER_IS_BETTER = frozenset({"val_loss", "train_loss", "val_wMAE", "val_inMAE", "val_outMAE",
                             "val_eMAE", "val_err_batchstats", "val_err_runningstats",
                             "val_cheat_gap", "train_err_batchstats", "train_err_runningstats",
                             "train_cheat_gap"})
# Pitfall probes after the last epoch (study option evaluation.probes); null when not run.
PROBES = ("probe_leak_train", "probe_leak_change_train", "probe_leak_eval", "probe_leak_change_eval",
          "probe_batch_dependent_train", "probe_batch_change_train", "probe_train_eval_output_gap",
          "probe_train_eval_accuracy_gap", "probe_stale_mean_shift", "probe_stale_var_ratio")
PARAM_FIELDS = [
    pa.field("norm", pa.string()),
    pa.field("frozen_stages", pa.int64()),
    pa.field("seq_len", pa.int64()),
    pa.field("videos_per_batch", pa.int64()),
    pa.field("carry_hidden", pa.bool_()),
    pa.field("precise_bn", pa.bool_()),  # v4; null in older files (it was study-level then)
    pa.field("lr", pa.float64()),
    pa.field("weight_decay", pa.float64()),
    pa.field("seed", pa.int64()),
]
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
        *[pa.field(name, pa.float64()) for name in PROBES],
        pa.field("duration_s", pa.float64()),
        pa.field("workers", pa.int64()),
    ],
    metadata={"pitfalls.schema_version": SCHEMA_VERSION},
)
PARAM_NAMES = [f.name for f in PARAM_FIELDS]
# Values of columns added since older versions, where "absent" had a meaning (else null).
UPGRADE_DEFAULTS = {"carry_hidden": False}
