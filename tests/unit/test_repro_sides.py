"""`pitfalls reproduce-compare`: runs side by side, recomputed from their results, a finding
reproduced only when it holds in every run, and a common seed count."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pitfalls.cli import main
from pitfalls.repro_sides import read_run, render_sides

MEMORY = {"finding": "F3", "check": "peak training memory", "observed": "1 MiB", "holds": True}


def _run(path, f1_gain: float, seeds: int, rng) -> None:
    """A finished reproduction's directory: F1 GN beats BN by `f1_gain`, F2 and F3/F4 hold."""
    def write(study, rows):
        (path / study).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), path / study / "results.parquet")

    base = rng.uniform(0.5, 0.6, seeds)
    write("repro_f1_norm", [{"status": "completed", "seed": s, "norm": norm, "frozen_stages": 0,
                             "seq_len": 16, "test_accuracy": float(base[s] + gain + rng.normal(0, 0.01))}
                            for s in range(seeds) for norm, gain in (("batch", 0.0), ("group", f1_gain))])
    write("repro_f2_cheating", [{"status": "completed", "seed": s, "norm": norm, "probe_leak_train": flag,
                                 "final_train_cheat_gap": gap + float(rng.uniform(0, 0.001)) * flag,
                                 "final_val_cheat_gap": (gap + float(rng.uniform(0, 0.001))) * flag}
                                for s in range(seeds)
                                for norm, gap, flag in (("batch", 0.05, 1.0), ("group", 0.0, 0.0))])
    write("repro_f3_f4_freeze_seq", [
        {"status": "completed", "seed": s, "norm": "group", "frozen_stages": f, "seq_len": n,
         "test_accuracy": float(base[s] + 0.2 * (n == 48) + 0.01 * f + rng.normal(0, 0.01))}
        for s in range(seeds) for f in (0, 2) for n in (8, 48)])
    (path / "reproduction.json").write_text(json.dumps({
        "machine": {"cpu": f"cpu of {path.name}", "isa": "AVX2"}, "standin_sha256": "ab" * 32,
        "checks": [{**MEMORY, "finding": "F2", "holds": False}, MEMORY], "wall_s": {"total": 60.0}}))


def test_a_finding_is_reproduced_only_when_it_holds_in_every_run(tmp_path, capsys):
    rng = np.random.default_rng(0)
    _run(tmp_path / "a", 0.2, 12, rng)
    _run(tmp_path / "b", -0.2, 12, rng)
    a, b = read_run(tmp_path / "a"), read_run(tmp_path / "b", "other")
    assert a.verdicts == {"F1": True, "F2": True, "F3": True, "F4": True}
    assert b.verdicts["F1"] is False and b.label == "other"
    # F2's probe check is recomputed from the results, not read from the report
    assert next(c for c in a.checks if c["finding"] == "F2")["holds"]
    text = render_sides([a, b])
    f1 = next(line for line in text.splitlines() if line.startswith("| F1: "))
    f4 = next(line for line in text.splitlines() if line.startswith("| F4: "))
    assert f1.endswith("| yes | no | **differs** |") and f4.endswith("| yes | yes | reproduced |")
    assert "cpu of a" in text and "cpu of b" in text
    assert main(["reproduce-compare", str(tmp_path / "a"), str(tmp_path / "b"), "--seeds", "3"]) == 0
    shown = capsys.readouterr().out
    assert "f1_norm 3, f2_cheating 3, f3_f4_freeze_seq 3" in shown  # the common seed count


def test_a_directory_without_a_finished_reproduction_is_one_clear_error(tmp_path, capsys):
    assert main(["reproduce-compare", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "reproduction.json" in err and "Traceback" not in err
