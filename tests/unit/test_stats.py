import json
import math

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from pitfalls.cli import main
from pitfalls.config import parse_study
from pitfalls.results import read_results, write_results
from pitfalls.results.stats import holm, paired_comparisons, t_interval
from tests.helpers import GRID_VALUES as VALUES
from tests.helpers import grid_rows as _rows
from tests.helpers import tiny_study


def test_holm_matches_hand_computation():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.2, None, 0.9]) == [0.4, None, 0.9]


def test_t_interval_closed_form():
    low, high = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, df=2) * s / sqrt(n), s = 1
    assert (low, high) == pytest.approx((2 - half, 2 + half))
    assert t_interval([5.0]) == (None, None)


def test_paired_comparisons_match_on_other_factors_and_seed(tmp_path):
    write_results(tmp_path / "r.parquet", _rows(VALUES))
    rows = paired_comparisons(read_results(tmp_path / "r.parquet"), ["norm", "frozen_stages"],
                              "val_accuracy")
    norm = next(r for r in rows if r["factor"] == "norm")
    diffs = np.array([VALUES[("group", f, s)] - VALUES[("batch", f, s)] for f in (0, 1) for s in (0, 1)])
    assert norm["pairs"] == 4 and norm["mean_diff"] == pytest.approx(diffs.mean())
    assert norm["d_z"] == pytest.approx(diffs.mean() / diffs.std(ddof=1))
    assert norm["p_t"] == pytest.approx(sps.ttest_rel(diffs, np.zeros(4)).pvalue)
    assert norm["p_wilcoxon"] == pytest.approx(sps.wilcoxon(diffs).pvalue)
    assert len(rows) == 2  # norm: batch→group; frozen_stages: 0→1
    assert [r["p_t_holm"] for r in rows] == pytest.approx(holm([r["p_t"] for r in rows]))
    assert norm["p_t_holm"] >= norm["p_t"]


def test_report_json_and_csv_formats(tmp_path, capsys):
    raw = tiny_study(seeds=[0, 1])
    raw["search_space"]["factors"]["frozen_stages"] = [0, 1]
    spec = parse_study(raw)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    write_results(tmp_path / "results.parquet", _rows(VALUES))
    assert main(["report", str(tmp_path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["factors"] == ["norm", "frozen_stages"] and len(data["combinations"]) == 4
    cell = next(c for c in data["combinations"] if c["norm"] == "batch" and c["frozen_stages"] == 0)
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(0.45)
    assert (cell["ci95_low"], cell["ci95_high"]) == pytest.approx(t_interval([0.5, 0.4]))
    assert {p["factor"] for p in data["paired"]} == {"norm", "frozen_stages"}
    assert main(["report", str(tmp_path), "--format", "csv"]) == 0
    csv = capsys.readouterr().out.splitlines()
    assert csv[0].startswith('"norm","frozen_stages","n","mean"') and len(csv) == 5
    assert main(["report", str(tmp_path)]) == 0
    assert "## Paired comparisons" in (tmp_path / "comparison.md").read_text()


def test_marginal_effects_interactions_best_and_importance(tmp_path):
    from pitfalls.results import comparison_table
    from pitfalls.results.stats import best_configurations, factor_importance, interactions, marginal_effects

    write_results(tmp_path / "r.parquet", _rows(VALUES))
    results = read_results(tmp_path / "r.parquet")
    factors = ["norm", "frozen_stages"]
    marg = {(m["factor"], m["level"]): m for m in marginal_effects(results, factors, "val_accuracy")}
    group = [v for (n, _, _), v in VALUES.items() if n == "group"]
    assert marg[("norm", "group")]["n"] == 4
    assert marg[("norm", "group")]["mean"] == pytest.approx(np.mean(group))
    assert (marg[("norm", "group")]["ci95_low"], marg[("norm", "group")]["ci95_high"]) == \
        pytest.approx(t_interval(group))
    cells = {(c["a"], c["b"]): c["mean"] for c in interactions(results, factors, "val_accuracy")[0]["cells"]}
    assert cells[("batch", 1)] == pytest.approx((0.70 + 0.30) / 2)
    combos = comparison_table(results, factors, "val_accuracy").to_pylist()
    best = best_configurations(combos, factors, "max")
    assert (best["overall"]["norm"], best["overall"]["frozen_stages"]) == ("group", 1)
    worst = best_configurations(combos, factors, "min")["overall"]
    assert (worst["norm"], worst["frozen_stages"]) == ("batch", 0)  # cell means 0.45 < 0.50
    importance = factor_importance(results, factors, "val_accuracy", "max")
    assert set(importance) == set(factors) and sum(importance.values()) == pytest.approx(1.0)
    assert factor_importance(results, ["norm"], "val_accuracy", "max") is None


def test_report_from_a_bare_parquet_file_infers_factors(tmp_path, capsys):
    write_results(tmp_path / "results.parquet", _rows(VALUES))
    assert main(["report", str(tmp_path / "results.parquet"), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["factors"] == ["norm", "frozen_stages"] and len(data["paired"]) == 2
    assert main(["report", str(tmp_path / "nothing.txt")]) == 2
    assert "neither a study directory" in capsys.readouterr().err


def _simulated(rng, effect: float, seeds: int = 8):
    """A known truth: factor `norm` shifts the metric by `effect`, `frozen_stages` does nothing.
    Each seed has its own offset shared by all arms (what pairing removes), plus trial noise."""
    import pyarrow as pa

    from pitfalls.results.schema import SCHEMA
    from pitfalls.results.store import trial_row

    rows = []
    for seed in range(seeds):
        offset = rng.normal(0, 0.1)
        for norm in ("batch", "group"):
            for frozen in (0, 2):
                v = 0.6 + offset + (effect if norm == "group" else 0.0) + rng.normal(0, 0.02)
                params = {"norm": norm, "frozen_stages": frozen, "seq_len": 8,
                          "videos_per_batch": 2, "lr": 1e-3, "weight_decay": 0.0, "seed": seed}
                rows.append(trial_row("sim", f"{seed}-{norm}-{frozen}", params,
                                      [{"epoch": 1, "val_accuracy": v}], status="completed",
                                      error=None, duration_s=1.0, workers=1))
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def test_known_truth_real_effect_found_with_right_sign_and_covering_interval():
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(50):
        rows = paired_comparisons(_simulated(rng, 0.05), ["norm", "frozen_stages"], "val_accuracy")
        norm = next(r for r in rows if r["factor"] == "norm")
        assert norm["p_t_holm"] < 0.05 and norm["mean_diff"] > 0  # group - batch = +0.05
        covered += norm["diff_ci95_low"] <= 0.05 <= norm["diff_ci95_high"]
    assert covered >= 44  # a 95% interval: expect ~47.5 of 50; 44 is ~2.5 binomial sd below


def test_known_truth_null_factor_rejected_at_about_the_nominal_rate():
    rng = np.random.default_rng(1)
    rejections = 0
    runs = 300
    for _ in range(runs):
        rows = paired_comparisons(_simulated(rng, 0.05), ["norm", "frozen_stages"], "val_accuracy")
        frozen = next(r for r in rows if r["factor"] == "frozen_stages")
        rejections += frozen["p_t"] < 0.05
    # nominal 5% of 300 = 15; binomial sd ≈ 3.8: accept 5..28 (about ±2.5 sd and a little more)
    assert 5 <= rejections <= 28, rejections


def test_failed_and_missing_trials_are_reported_not_averaged(tmp_path, capsys):
    rows = _rows(VALUES)
    rows[0]["status"], rows[0]["error"] = "failed", "boom"  # batch/0/seed0 failed
    del rows[1]  # group/0/seed0 never ran
    raw = tiny_study(seeds=[0, 1])
    raw["search_space"]["factors"]["frozen_stages"] = [0, 1]
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(parse_study(raw).to_dict(), sort_keys=False))
    write_results(tmp_path / "results.parquet", rows)
    assert main(["report", str(tmp_path), "--format", "json"]) == 0
    combos = {(c["norm"], c["frozen_stages"]): c for c in json.loads(capsys.readouterr().out)["combinations"]}
    assert combos[("batch", 0)]["n"] == 1 and combos[("batch", 0)]["failed"] == 1
    assert combos[("batch", 0)]["mean"] == pytest.approx(VALUES[("batch", 0, 1)])  # failed not averaged
    assert combos[("group", 0)]["n"] == 1 and combos[("group", 0)]["missing"] == 1
