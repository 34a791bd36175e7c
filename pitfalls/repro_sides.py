"""`pitfalls reproduce-compare`: runs of `pitfalls reproduce` on different machines, side by side.

A finding counts as reproduced only when it holds in every run. Each run is read from its output
directory (its `reproduction.json` and its studies' results), and its comparisons are computed
again from the results, so runs with more seeds can be compared at a common count
(`seeds`: the first n seeds of every study; a `--quick` run's seeds are the first 10 of a full
one's). The memory check is the planner's and is taken from the run's own report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc

from pitfalls.markdown import table
from pitfalls.repro import COMPARISONS, FINDINGS, _config, _num, compare, probe_check, verdicts


@dataclass
class Run:
    label: str
    machine: dict
    seeds: dict[str, int]
    standin_sha256: str
    comparisons: list[dict]
    checks: list[dict]
    verdicts: dict[str, bool]
    wall_s: dict[str, float]


def read_run(run_dir: Path, label: str | None = None, seeds: int | None = None) -> Run:
    """A reproduction's output directory, its comparisons recomputed (at its first `seeds`)."""
    from pitfalls.results import read_results

    run_dir = Path(run_dir)
    report_file = run_dir / "reproduction.json"
    if not report_file.is_file():
        raise FileNotFoundError(f"{report_file}: not found (is {run_dir} the --out of a finished "
                                f"`pitfalls reproduce`?)")
    report = json.loads(report_file.read_text())
    results = {}
    for study in {c.study for c in COMPARISONS}:
        t = read_results(run_dir / study / "results.parquet")
        results[study] = t if seeds is None else t.filter(pc.less(t["seed"], seeds))
    comparisons = compare(results, COMPARISONS)
    checks = [probe_check(results["repro_f2_cheating"])]
    checks += [c for c in report["checks"] if c["finding"] != "F2"]  # the planner's memory check
    counts = {s: len(set(t["seed"].to_pylist())) for s, t in results.items()}
    return Run(label or run_dir.name, report.get("machine", {}), counts,
               report.get("standin_sha256", ""), comparisons, checks, verdicts(comparisons, checks),
               report.get("wall_s", {}))


def _cell(r: dict) -> str:
    return (f"{_num(r['mean_diff'])} [{_num(r['diff_ci95_low'])}, {_num(r['diff_ci95_high'])}], "
            f"p {_num(r['p_t_holm'], '.2g')}: {'yes' if r['holds'] else 'no'}")


def _agreement(holds: list[bool]) -> str:
    if all(holds):
        return "reproduced"
    return "not shown on any" if not any(holds) else "**differs**"


def render_sides(runs: list[Run]) -> str:
    """Machines, per-comparison figures and per-finding verdicts, one column per run."""
    labels = [r.label for r in runs]
    machines = table(["run", "CPU", "flags", "torch kernels", "kernel overrides", "torch (MKL, oneDNN)",
                      "seeds", "stand-in SHA-256", "wall"],
                     [[r.label, r.machine.get("cpu", "?"), r.machine.get("cpu_flags", "?"),
                       r.machine.get("isa", "?"), r.machine.get("kernel_env", "?"),
                       f"{r.machine.get('torch', '?')} ({r.machine.get('mkl', '?')}, "
                       f"{r.machine.get('onednn', '?')})",
                       ", ".join(f"{k.removeprefix('repro_')} {v}" for k, v in sorted(r.seeds.items())),
                       r.standin_sha256[:12], f"{r.wall_s.get('total', float('nan')) / 60:.1f} min"]
                      for r in runs])
    rows = []
    for i, c in enumerate(COMPARISONS):
        cells = [r.comparisons[i] for r in runs]
        rows.append([c.finding, f"{c.metric}: {_config(c.baseline)} → {_config(c.better)}",
                     *(_cell(x) if c.primary else _cell(x).rsplit(":", 1)[0] + " (secondary)"
                       for x in cells),
                     _agreement([x["holds"] for x in cells]) if c.primary else ""])
    comparisons = table(["finding", "comparison (effect [95% interval], Holm p: holds)", *labels,
                         "across runs"], rows)
    checks = table(["finding", "check", *labels],
                   [[c["finding"], c["check"], *(r.checks[i]["observed"] + (": yes" if r.checks[i]["holds"]
                                                                             else ": no") for r in runs)]
                    for i, c in enumerate(runs[0].checks)])
    findings = table(["finding", *labels, "across runs"],
                     [[f"{f}: {text}", *("yes" if r.verdicts[f] else "no" for r in runs),
                       _agreement([r.verdicts[f] for r in runs])] for f, text in FINDINGS.items()])
    return "\n".join([machines, comparisons, checks, findings])
