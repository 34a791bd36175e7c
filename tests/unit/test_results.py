import numpy as np

from pitfalls.results import comparison_table, read_results, to_markdown, trial_row, write_results


def _row(tid, norm, seed, acc_curve, status="completed"):
    params = {"norm": norm, "frozen_stages": 0, "seq_len": 4, "videos_per_batch": 2,
              "lr": 1e-3, "weight_decay": 0.0, "seed": seed}
    history = [{"epoch": i + 1, "val_accuracy": a, "val_loss": 1 - a} for i, a in enumerate(acc_curve)]
    return trial_row("s", tid, params, history, status=status,
                     error=None if status == "completed" else "boom", duration_s=1.0, workers=1)


def test_rows_round_trip_and_best_final(tmp_path):
    path = tmp_path / "results.parquet"
    write_results(path, [_row("a", "batch", 0, [0.2, 0.6, 0.5])])
    t = read_results(path)
    assert t.num_rows == 1 and t.schema.metadata[b"pitfalls.schema_version"] == b"4"
    r = t.to_pylist()[0]
    assert r["final_val_accuracy"] == 0.5 and r["best_val_accuracy"] == 0.6
    assert np.isclose(r["best_val_loss"], 0.4) and r["curve_val_accuracy"] == [0.2, 0.6, 0.5]


def test_same_trial_written_twice_keeps_one_row(tmp_path):
    path = tmp_path / "results.parquet"
    write_results(path, [_row("a", "batch", 0, [0.1]), _row("a", "batch", 0, [0.9])])
    assert read_results(path)["final_val_accuracy"].to_pylist() == [0.9]


def test_comparison_table_mean_std_over_seeds_and_failures(tmp_path):
    path = tmp_path / "results.parquet"
    write_results(path, [
        _row("a", "batch", 0, [0.5]), _row("b", "batch", 1, [0.7]), _row("c", "batch", 2, [0.9]),
        _row("d", "group", 0, [0.8]), _row("e", "group", 1, [0.0], status="failed"),
    ])
    table = comparison_table(read_results(path), ["norm"], "val_accuracy").to_pylist()
    batch, group = table
    assert batch["n"] == 3 and np.isclose(batch["mean"], 0.7)
    assert np.isclose(batch["std"], np.std([0.5, 0.7, 0.9], ddof=1))
    assert group["n"] == 1 and group["std"] is None and group["failed"] == 1
    md = to_markdown(comparison_table(read_results(path), ["norm"], "val_accuracy"),
                     ["norm"], "val_accuracy", "max")
    assert "| batch | 3 | 0.7000 ± 0.2000 | [0.2032, 1.1968] | 0 |" in md  # t(0.975, 2)·0.2/√3
    assert "| group | 1 | **0.8000 ± –** | – | 1 |" in md


def test_version_1_files_read_as_the_current_schema(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pitfalls.results.schema import PROBES, SCHEMA

    old = pa.Table.from_pylist([_row("a", "batch", 0, [0.5])], schema=SCHEMA)
    old = old.drop_columns(list(PROBES)).replace_schema_metadata({"pitfalls.schema_version": "1"})
    pq.write_table(old, tmp_path / "v1.parquet")
    t = read_results(tmp_path / "v1.parquet")
    assert t.schema.equals(SCHEMA) and t["probe_leak_train"].null_count == 1
    assert t["final_val_accuracy"].to_pylist() == [0.5]


def test_version_2_files_read_with_carry_hidden_false_and_new_metrics_null(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pitfalls.results.schema import SCHEMA

    new_metrics = ("val_precision", "val_recall", "val_jaccard", "val_wMAE", "val_inMAE",
                   "val_outMAE", "val_eMAE")
    dropped = ["carry_hidden", *(f"{k}_{m}" for m in new_metrics for k in ("final", "best", "curve"))]
    old = pa.Table.from_pylist([_row("a", "batch", 0, [0.5])], schema=SCHEMA).drop_columns(dropped)
    pq.write_table(old.replace_schema_metadata({"pitfalls.schema_version": "2"}), tmp_path / "v2.parquet")
    t = read_results(tmp_path / "v2.parquet")
    assert t.schema.equals(SCHEMA)
    assert t["carry_hidden"].to_pylist() == [False] and t["final_val_wMAE"].null_count == 1
