"""`pitfalls reproduce`: the papers' four findings on synthetic video, on a CPU, in one command.

Three small studies (studies/repro/) run through the normal platform (Ray Tune, MLflow, Parquet
results), then every finding is stated as paired comparisons over seeds: same seed, same data
order, only the compared factor differs. Per comparison: the mean difference, its 95% t interval,
the paired t-test and Wilcoxon signed-rank p-values, Holm-adjusted over the reproduction's
primary comparisons (secondary ones are reported unadjusted). A finding holds when each of its
primary comparisons points the paper's way with a 95% interval that excludes 0 and a
Holm-adjusted t-test p below 0.05 (and, for F2 and F3, the probe and memory checks listed with
it). Nothing here knows what the numbers should be. The seeds per study come from a power
analysis on earlier runs (`pitfalls.repro_power`), unless `quick` runs the studies' own 10.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pyarrow as pa
import pyarrow.compute as pc

from pitfalls.fileio import atomic_write
from pitfalls.machine import describe, machine_info
from pitfalls.markdown import table
from pitfalls.probes.registry import LEAK_FLAG
from pitfalls.results.schema import metric_column
from pitfalls.results.stats import _compare, holm

STUDIES = Path(__file__).resolve().parent.parent / "studies" / "repro"
HF_HOME = "hf"  # under the output directory: the stand-in "pretrained" weights' Hugging Face cache
PRETRAIN_THREADS = 1  # fixed, as each trial's (cpus_per_worker): the bits must not follow core counts


@dataclass(frozen=True)
class Comparison:
    """`better` minus `baseline` on `metric`, paired by seed; `sign` +1 if the paper expects an
    increase, -1 a decrease."""

    finding: str
    study: str
    metric: str
    baseline: dict
    better: dict
    sign: int
    claim: str
    primary: bool = True  # part of the verdict; secondary rows are reported only

    @property
    def key(self) -> str:
        return f"{self.finding} {_config(self.baseline)} -> {_config(self.better)}"


COMPARISONS = [
    Comparison("F1", "repro_f1_norm", "test_accuracy", {"norm": "batch"}, {"norm": "group"}, +1,
               "GroupNorm reaches a higher test accuracy than BatchNorm (one video per batch)"),
    Comparison("F2", "repro_f2_cheating", "train_cheat_gap", {"norm": "group"}, {"norm": "batch"}, +1,
               "BN's error with running statistics exceeds its error with the sequence's own "
               "statistics (training videos) by more than GroupNorm's"),
    Comparison("F2", "repro_f2_cheating", "val_cheat_gap", {"norm": "group"}, {"norm": "batch"}, +1,
               "the same gap on held-out videos (reported, not part of the verdict)", primary=False),
    Comparison("F3", "repro_f3_f4_freeze_seq", "test_accuracy",
               {"frozen_stages": 0, "seq_len": 8}, {"frozen_stages": 2, "seq_len": 48}, +1,
               "frozen stem + 2 stages at 48 frames beats no freezing at 8 frames"),
    Comparison("F4", "repro_f3_f4_freeze_seq", "test_accuracy",
               {"frozen_stages": 0, "seq_len": 8}, {"frozen_stages": 0, "seq_len": 48}, +1,
               "48-frame sequences beat 8-frame sequences (no freezing)"),
    Comparison("F4", "repro_f3_f4_freeze_seq", "test_accuracy",
               {"frozen_stages": 2, "seq_len": 8}, {"frozen_stages": 2, "seq_len": 48}, +1,
               "48-frame sequences beat 8-frame sequences (2 stages frozen)"),
]
FINDINGS = {
    "F1": "BN-free beats BN end to end when a batch holds one video",
    "F2": "BN cheats in anticipation (batch statistics leak the future) and the leakage probe flags it",
    "F3": "freezing early stages allows longer sequences at the same memory, and that helps",
    "F4": "longer temporal context helps",
}


@dataclass
class Reproduction:
    comparisons: list[dict] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)  # non-statistical conditions (probe, memory)
    verdicts: dict[str, bool] = field(default_factory=dict)
    wall_s: dict[str, float] = field(default_factory=dict)
    machine: dict[str, str] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=dict)  # per study
    power: list[dict] = field(default_factory=list)  # per primary comparison (repro_power)
    standin_sha256: str = ""  # the stand-in pretrained weights: the first stage two machines share


def _values(results: pa.Table, metric: str, where: dict) -> dict[int, float]:
    done = results.filter(pc.equal(results["status"], "completed"))
    for k, v in where.items():
        done = done.filter(pc.equal(done[k], v))
    column = done[metric_column(metric)].to_pylist()
    return {s: v for s, v in zip(done["seed"].to_pylist(), column) if v is not None}


def compare(results: dict[str, pa.Table], comparisons: list[Comparison]) -> list[dict]:
    """Paired differences (better − baseline) by seed, with Holm-adjusted p-values."""
    rows = []
    for c in comparisons:
        a = _values(results[c.study], c.metric, c.baseline)
        b = _values(results[c.study], c.metric, c.better)
        seeds = sorted(set(a) & set(b))
        row = _compare(c.metric, c.baseline, c.better, [b[s] - a[s] for s in seeds])
        rows.append({"finding": c.finding, "study": c.study, "claim": c.claim, "sign": c.sign,
                     "primary": c.primary,
                     "baseline": c.baseline, "better": c.better, "metric": c.metric,
                     "seeds": seeds, "values": {s: [a[s], b[s]] for s in seeds},
                     **{k: row[k] for k in ("pairs", "mean_diff", "diff_ci95_low",
                                                           "diff_ci95_high", "d_z", "p_t",
                                                           "p_wilcoxon")}})
    for key in ("p_t", "p_wilcoxon"):
        primary = [r for r in rows if r["primary"]]  # the family the verdicts rest on
        for row, adj in zip(primary, holm([r[key] for r in primary])):
            row[f"{key}_holm"] = adj
        for row in rows:
            if not row["primary"]:
                row[f"{key}_holm"] = row[key]
    for row in rows:
        low, high, p = row["diff_ci95_low"], row["diff_ci95_high"], row["p_t_holm"]
        directed = (low is not None and low > 0) if row["sign"] > 0 else (high is not None and high < 0)
        row["holds"] = bool(directed and p is not None and p < 0.05)
    return rows


def probe_check(results: pa.Table) -> dict:
    """F2's detection: the leakage probe (train mode) flags every BN model and no GN model, and
    GN's cheat gap is exactly 0 (no batch statistics at all)."""
    def flags(norm: str) -> list[float]:
        t = results.filter(pc.equal(results["norm"], norm))
        return [v for v in t[LEAK_FLAG].to_pylist() if v is not None]

    bn, gn = flags("batch"), flags("group")
    gn_gaps = [v for v in results.filter(pc.equal(results["norm"], "group"))["final_train_cheat_gap"]
               .to_pylist() if v is not None]
    ok = bool(bn) and all(f == 1.0 for f in bn) and bool(gn) and not any(gn) \
        and all(g == 0.0 for g in gn_gaps)
    return {"finding": "F2", "check": "leakage probe flags BN, not GN; GN's gap is exactly 0",
            "observed": f"BN flagged {int(sum(bn))}/{len(bn)}, GN flagged {int(sum(gn))}/{len(gn)}; "
                        f"GN gaps {sorted(set(gn_gaps))}", "holds": ok}


def memory_check(spec, device=None) -> dict:
    """F3's premise, measured by the planner: frozen stages at the long sequence (F3's `better`)
    need no more training memory than no freezing at the short one (F3's `baseline`), while no
    freezing at the long one does."""
    from pitfalls.plan import plan_study

    f3 = next(c for c in COMPARISONS if c.finding == "F3")
    short = (f3.baseline["frozen_stages"], f3.baseline["seq_len"])
    frozen_long = (f3.better["frozen_stages"], f3.better["seq_len"])
    unfrozen_long = (short[0], frozen_long[1])
    plan = plan_study(spec, device)
    peak = {(c.params["frozen_stages"], c.params["seq_len"]): c.train_peak_bytes for c in plan.configs}
    mib = {k: v / 2**20 for k, v in peak.items()}
    ok = peak[frozen_long] <= peak[short] < peak[unfrozen_long]
    name = lambda k: f"frozen {k[0]} @ {k[1]}"
    return {"finding": "F3", "check": f"peak training memory: {name(frozen_long)} frames <= "
                                      f"{name(short)} < {name(unfrozen_long)} (pitfalls plan)",
            "observed": ", ".join(f"{name(k)}: {m:.1f} MiB" for k, m in sorted(mib.items())),
            "holds": bool(ok)}


def verdicts(comparisons: list[dict], checks: list[dict]) -> dict[str, bool]:
    """A finding holds when all its primary comparisons and its checks hold."""
    out = {}
    for finding in FINDINGS:
        parts = [r["holds"] for r in comparisons if r["finding"] == finding and r["primary"]]
        parts += [c["holds"] for c in checks if c["finding"] == finding]
        out[finding] = bool(parts) and all(parts)
    return out


def _completed(study_dir: Path) -> int:
    from pitfalls.results.store import read_study_results

    return pc.sum(pc.equal(read_study_results(study_dir)["status"], "completed")).as_py() or 0


def _freezing_study(specs: list):
    return next(s for s in specs if s.name == "repro_f3_f4_freeze_seq")


def power_plan() -> list:
    """Seeds per primary comparison, from the power analysis on the earlier runs."""
    from pitfalls.repro_power import plan

    return plan([c.key for c in COMPARISONS if c.primary])


def planned_seeds(plans: list | None = None) -> dict[str, int]:
    """Per study: the most seeds any of its primary comparisons needs (at least MIN_SEEDS; a
    comparison out of reach at MAX_SEEDS is run at MAX_SEEDS and its power reported)."""
    from pitfalls.repro_power import MAX_SEEDS, MIN_SEEDS

    needed = {p.key: p.needed or MAX_SEEDS for p in plans or power_plan()}
    out: dict[str, int] = {}
    for c in COMPARISONS:
        if c.primary:
            out[c.study] = max(out.get(c.study, MIN_SEEDS), needed[c.key])
    return out


def load_repro_studies(seeds: list[int] | dict[str, int] | None = None,
                       steps_per_epoch: int | None = None, check_weights: bool = True) -> list:
    """The reproduction's studies: `seeds` a list for every study, a count per study name (the
    power analysis's), or None for the study files' own (the quick run)."""
    import yaml

    from pitfalls.config import parse_study

    specs = []
    for path in sorted(STUDIES.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if isinstance(seeds, dict):
            raw["seeds"] = list(range(seeds[raw["name"]]))
        elif seeds is not None:
            raw["seeds"] = seeds
        if steps_per_epoch is not None:
            raw["budget"]["steps_per_epoch"] = steps_per_epoch
        specs.append(parse_study(raw, source=str(path), base_dir=path.parent,
                                 check_weights=check_weights))
    return specs


def _standin(spec, hf_home: Path, steps: int | None) -> tuple[str, float | None]:
    """The F3/F4 study's "pretrained" weights (synthetic stand-in, repro_pretrain), made once in
    `hf_home`; their SHA-256 (the first stage two machines' runs can be compared at)."""
    import hashlib

    from pitfalls.models.backbone import backbone_info
    from pitfalls.models.pretrained import cached_file
    from pitfalls.repro_pretrain import pretrain_standin

    source = backbone_info(spec.model.backbone).source
    t0, made, path = time.perf_counter(), None, cached_file(source)
    if path is None:
        path = pretrain_standin(source.name, hf_home, spec.dataset.options, threads=PRETRAIN_THREADS,
                                **({"steps": steps} if steps else {}))
        made = time.perf_counter() - t0
    return hashlib.sha256(Path(path).read_bytes()).hexdigest(), made


def _offline_cache(hf_home: Path) -> None:
    """This run's own Hugging Face cache, offline, for this process and its trials (the driver
    hands its cache settings to every trial; on a cluster, --out must be a directory every node
    sees)."""
    from pitfalls.models.pretrained import use_hf_environment

    use_hf_environment({"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})


def reproduce(out_dir: Path, *, address: str | None = None, tracking_uri: str | None = None,
              seeds: list[int] | None = None, steps_per_epoch: int | None = None,
              quick: bool = False, pretrain_steps: int | None = None,
              out: TextIO | None = None) -> Reproduction:
    """Run (or resume) the three studies in `out_dir`, then test every finding. Seeds: `seeds`
    for every study if given, else the studies' own 10 with `quick`, else the power analysis's."""
    out = out or sys.stdout
    from pitfalls.results import read_results
    from pitfalls.sweep.driver import resume_study, run_study, study_changes

    out_dir = Path(out_dir).resolve()
    plans = power_plan()
    per_study = seeds if seeds is not None else (None if quick else planned_seeds(plans))
    rep = Reproduction(machine=machine_info())
    start = time.perf_counter()
    hf_home = out_dir / HF_HOME
    _offline_cache(hf_home)
    bare = _freezing_study(load_repro_studies(per_study, steps_per_epoch, check_weights=False))
    print(f"stand-in pretrained weights for {bare.model.backbone} -> {hf_home}", file=out)
    rep.standin_sha256, made = _standin(bare, hf_home, pretrain_steps)
    if made is not None:
        rep.wall_s["pretraining"] = made
    specs = load_repro_studies(per_study, steps_per_epoch)  # every check, the weights' included
    frozen = _freezing_study(specs)
    rep.seeds = {spec.name: len(spec.seeds) for spec in specs}
    rep.power = [{"key": p.key, "prior_effect": p.effect, "prior_sd": p.sd, "d": p.d,
                  "alpha": p.alpha, "needed": p.needed,
                  "power": p.power_at(rep.seeds[next(c.study for c in COMPARISONS if c.key == p.key)])}
                 for p in plans]
    results = {}
    for spec in specs:
        study_dir = out_dir / spec.name
        t0 = time.perf_counter()
        state = study_dir / "state.json"
        if not state.is_file():
            outcome = run_study(spec, study_dir, tracking_uri=tracking_uri, address=address, out=out)
        elif changes := study_changes(json.loads(state.read_text()).get("study") or {}, spec.to_dict()):
            raise RuntimeError(f"{study_dir} holds {spec.name} run with another definition "
                               f"(changed: {'; '.join(changes)}); choose another --out")
        elif _completed(study_dir) == spec.num_trials:
            print(f"\n{spec.name}: complete in {study_dir}, read back", file=out)
            outcome = None
        else:
            print(f"\n{spec.name}: continuing the study in {study_dir}", file=out)
            outcome = resume_study(study_dir, tracking_uri=tracking_uri, address=address, out=out)
        rep.wall_s[spec.name] = time.perf_counter() - t0
        if outcome is not None and (outcome.failed or outcome.unfinished):
            raise RuntimeError(f"{spec.name}: {outcome.failed} failed, {outcome.unfinished} unfinished; "
                               f"run the same command again to continue")
        results[spec.name] = read_results(study_dir / "results.parquet")
    t0 = time.perf_counter()
    rep.comparisons = compare(results, COMPARISONS)
    rep.checks = [probe_check(results["repro_f2_cheating"]),
                  memory_check(frozen)]
    rep.wall_s["memory check"] = time.perf_counter() - t0
    rep.wall_s["total"] = time.perf_counter() - start
    rep.verdicts = verdicts(rep.comparisons, rep.checks)
    atomic_write(out_dir / "reproduction.json", json.dumps(
        {"comparisons": rep.comparisons, "checks": rep.checks, "verdicts": rep.verdicts,
         "wall_s": rep.wall_s, "machine": rep.machine, "seeds": rep.seeds, "power": rep.power,
         "standin_sha256": rep.standin_sha256}, indent=2, default=str))
    atomic_write(out_dir / "reproduction.md", render(rep))
    return rep


def _num(v, fmt: str = ".4f") -> str:
    return "—" if v is None else format(v, fmt)


def _config(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def render(rep: Reproduction) -> str:
    lines = ["# Reproduction of the papers' findings on synthetic video", "",
             f"Machine: {describe(rep.machine)}.", "",
             f"Seeds: {', '.join(f'{k} {v}' for k, v in rep.seeds.items())}; stand-in pretrained "
             f"weights SHA-256 {rep.standin_sha256[:16]}.", "",
             table(["finding", "holds"], [[f"{f}: {FINDINGS[f]}", "yes" if rep.verdicts.get(f) else "NO"]
                                          for f in FINDINGS]).rstrip("\n")]
    lines += ["", "Paired by seed (effect = second configuration − first; 95% t interval; p: paired "
              "t-test and Wilcoxon signed-rank, Holm-adjusted over the primary rows; secondary rows "
              "unadjusted and not part of the verdict):", "",
              table(["finding", "study", "metric", "first", "second", "pairs", "effect",
                     "95% interval", "d_z", "p (t)", "p (Wilcoxon)", "holds"], [
                  [r["finding"], r["study"], r["metric"], _config(r["baseline"]), _config(r["better"]),
                   r["pairs"], _num(r["mean_diff"]),
                   f"[{_num(r['diff_ci95_low'])}, {_num(r['diff_ci95_high'])}]", _num(r["d_z"], ".2f"),
                   _num(r["p_t_holm"], ".2g"), _num(r["p_wilcoxon_holm"], ".2g"),
                   ("yes" if r["holds"] else "no") if r["primary"] else "(secondary)"]
                  for r in rep.comparisons]).rstrip("\n")]
    lines += ["", table(["finding", "check", "observed", "holds"],
                        [[c["finding"], c["check"], c["observed"], "yes" if c["holds"] else "no"]
                         for c in rep.checks]).rstrip("\n")]
    if rep.power:
        lines += ["", "Power of each primary comparison at the seeds run (paired two-sided t-test at "
                  "the strictest Holm level, for the effect pooled from the earlier runs; "
                  "`pitfalls.repro_power`):", "",
                  table(["comparison", "prior effect", "prior sd", "d", "alpha", "seeds for 80%",
                         "power here"],
                        [[r["key"], _num(r["prior_effect"]), _num(r["prior_sd"]), _num(r["d"], ".2f"),
                          _num(r["alpha"], ".3g"), r["needed"] or "out of reach",
                          _num(r["power"], ".2f")] for r in rep.power]).rstrip("\n")]
    lines += ["", "Wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in rep.wall_s.items()), ""]
    return "\n".join(lines)
