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
    from pitfalls.results.schema import SCHEMA_VERSION

    assert t.num_rows == 1 and t.schema.metadata[b"pitfalls.schema_version"] == SCHEMA_VERSION.encode()
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


SHAPES = [{"videos_per_batch": 1, "seq_len": 4}, {"videos_per_batch": 2, "seq_len": 2},
          {"videos_per_batch": 4, "seq_len": 1}]


def _linked_study():
    from pitfalls.config import parse_study
    from tests.helpers import tiny_study

    raw = tiny_study(seeds=[0, 1, 2])
    factors = raw["search_space"]["factors"]
    del factors["seq_len"], factors["videos_per_batch"]
    factors["batch_shape"] = SHAPES
    return parse_study(raw)


def _linked_rows():
    """norm x batch_shape x 3 seeds; (group, 4 x 1) never ran, (batch, 2 x 2, seed 2) failed."""
    rng = np.random.default_rng(0)
    rows, values = [], {}
    for norm in ("batch", "group"):
        for k, shape in enumerate(SHAPES):
            for seed in (0, 1, 2):
                if norm == "group" and k == 2:
                    continue
                v = 0.5 + 0.1 * k + 0.05 * (norm == "group") + 0.02 * seed + rng.normal(0, 0.01)
                failed = norm == "batch" and k == 1 and seed == 2
                params = {"norm": norm, "frozen_stages": 1, **shape, "lr": 1e-3,
                          "weight_decay": 1e-4, "seed": seed}
                rows.append(trial_row("tiny", f"t{len(rows)}", params,
                                      [] if failed else [{"epoch": 1, "val_accuracy": v}],
                                      status="failed" if failed else "completed",
                                      error="boom" if failed else None, duration_s=1.0, workers=1))
                if not failed:
                    values[(norm, k, seed)] = v
    return rows, values


def test_report_treats_a_linked_factor_as_one_factor(tmp_path):
    import pyarrow as pa

    from pitfalls.results.analysis import analysis_of_study, comparison_data
    from pitfalls.results.render_html import render_html
    from pitfalls.results.render_md import comparison_markdown

    rows, values = _linked_rows()
    write_results(tmp_path / "results.parquet", rows)
    results = read_results(tmp_path / "results.parquet")
    assert "batch_shape" not in results.column_names  # the schema is unchanged
    a = analysis_of_study(_linked_study())
    labels = ["videos_per_batch=1, seq_len=4", "videos_per_batch=2, seq_len=2",
              "videos_per_batch=4, seq_len=1"]
    assert a.factors == ["norm", "batch_shape"] and a.levels["batch_shape"] == labels
    data = comparison_data(results, a)

    combos = {(c["norm"], c["batch_shape"]): c for c in data["combinations"]}
    assert len(combos) == 6
    assert combos[("group", labels[2])]["n"] == 0 and combos[("group", labels[2])]["missing"] == 3
    assert combos[("batch", labels[1])]["failed"] == 1 and combos[("batch", labels[1])]["missing"] == 0
    assert combos[("batch", labels[0])]["n"] == 3

    paired = {(r["level_a"], r["level_b"]): r for r in data["paired"] if r["factor"] == "batch_shape"}
    assert {k: r["pairs"] for k, r in paired.items()} == {
        (labels[0], labels[1]): 5, (labels[0], labels[2]): 3, (labels[1], labels[2]): 2}
    diffs = [values[(n, 1, s)] - values[(n, 0, s)] for n in ("batch", "group") for s in (0, 1, 2)
             if (n, 1, s) in values]
    assert np.isclose(paired[(labels[0], labels[1])]["mean_diff"], np.mean(diffs))
    # norm: batch vs group on the same shape and seed (3 + 2 + 0: one failed, one never ran)
    assert [r["pairs"] for r in data["paired"] if r["factor"] == "norm"] == [5]

    marginal = [m for m in data["marginal"] if m["factor"] == "batch_shape"]
    assert [m["level"] for m in marginal] == labels and [m["n"] for m in marginal] == [6, 5, 3]
    assert data["interactions"][0]["factors"] == ["norm", "batch_shape"]
    assert data["best"]["overall"]["batch_shape"] == labels[2]
    assert set(data["importance"]) == {"norm", "batch_shape"}

    md = comparison_markdown(results, a, data)
    assert f"| group | {labels[2]} | 0 | – | – | 0 | 3 |" in md
    assert f"| batch_shape | {labels[0]} → {labels[1]} | 5 |" in md
    html = render_html(results, a, data)
    assert labels[2] in html and html.count("<img") >= 3
    assert pa.Table.from_pylist(data["combinations"]).num_rows == 6


def test_a_row_matching_no_linked_level_is_labelled_with_its_own_values():
    import pyarrow as pa

    from pitfalls.results.analysis import analysis_of_study, with_factor_columns
    from pitfalls.results.schema import SCHEMA

    params = {"norm": "batch", "frozen_stages": 1, "videos_per_batch": 8, "seq_len": 2,
              "lr": 1e-3, "weight_decay": 0.0, "seed": 0}
    row = trial_row("tiny", "t0", params, [{"epoch": 1, "val_accuracy": 0.5}],
                    status="completed", error=None, duration_s=1.0, workers=1)
    table = with_factor_columns(pa.Table.from_pylist([row], schema=SCHEMA),
                                analysis_of_study(_linked_study()))
    assert table["batch_shape"].to_pylist() == ["videos_per_batch=8, seq_len=2"]
