"""Where a trial's time goes: platform start-up vs training, and plain-loop vs in-platform speed.

    uv run python benchmarks/trial_overhead.py                 # ~2 min on 2 cores
    uv run python benchmarks/trial_overhead.py --multi-worker  # + a 2-worker (Ray Train) study

Everything is measured in one run (the machine is noisy: compare ratios, not absolute numbers):

0. Import cost in a fresh Python process (what every new Ray actor / Train worker pays), module
   by module, cumulative order: each figure is what that import adds to the ones before it.
1. Plain loop: `pitfalls.train.train(TrialConfig)` called directly in this process, one torch
   thread, once per trial configuration of the study (same params and seed); then, as a control
   for core sharing, 2 plain processes training at the same time (the platform runs 2 trials at
   once on 2 cores), started together after their imports.
2. The same trials as a study through the real `pitfalls.sweep.driver.run_study` (grid over
   seeds, identical work per trial, 1 worker x 1 CPU per trial, so 2 trials run at once on
   2 cores), in a temporary directory.  Optionally (`--multi-worker`) a second study whose
   trials use 2 Ray Train workers each.

How "trial start -> first training step" is obtained without touching the package
-------------------------------------------------------------------------------------
`results.parquet` alone is not enough: it has `duration_s` per trial but no timestamps and no
`epoch_s`.  The script combines four records that the unmodified platform already writes, all
on this machine's `time.time()` clock:

* trial start: `run_study(out=...)` prints one line per Tune event (ConsoleProgress); the
  script passes a stream that timestamps each line, so the first line naming a trial is Tune's
  `on_trial_start` for it.  Tune fires that callback once the trial's actor is *running*: for a
  new actor the process spawn and the actor's imports (unpickling the trainable imports
  `pitfalls.sweep.trial`, hence mlflow and torch) happen before it, which is why the tables also
  show `run_study -> first trial start` and `gap` (previous trial's end -> this start).
* trial function entered: the trial's MLflow child run `start_time` (`open_trial_run` is the
  first thing `run_trial` does).
* first training step: the trial logs `epoch_s` for epoch 1 with a millisecond timestamp taken
  right after `epoch_s` was measured, and `epoch_s` is measured from the line just before the
  first step (`t0` in `train()`), so  first step = ts(epoch_s@1) - epoch_s@1.  Under DDP this
  is rank 0's log, i.e. rank 0's first step.
* trial end: the `DONE` line; `duration_s` in `results.parquet` (on_trial_start ->
  on_trial_complete), minus the sum of `epoch_s` (train + eval of every epoch), is the trial's
  platform overhead.
Tune's `result.json` gives each trial's actor pid (`pid`), which shows actor reuse.

Throughput: `train_frames_per_s` (train steps only, no eval) as reported per epoch, median over
epochs, for the plain call and for the in-platform trial (from its MLflow metric history).  The
platform figure includes whatever the platform costs while training: 2 concurrent trials on
2 cores, the Tune driver loop, Ray's daemons, MLflow writes.  `platform / plain x2` removes the
core sharing and leaves the platform's own cost.  Note that Ray runs its workers at niceness 15,
so anything else on the machine (Ray's daemons, the driver, other jobs) preempts the trials.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMPORTS = ["ray", "ray.tune", "mlflow", "torch", "timm", "ray.train.torch",
           "pitfalls.sweep.trial", "pitfalls.train"]
CONSOLE_LINE = re.compile(r"\]\s+(\S+)\s.*\|\s+(\w+)")


def study_dict(args: argparse.Namespace, name: str, workers: int, trials: int) -> dict:
    """A tiny grid study: the same configuration `trials` times with different seeds."""
    return {
        "name": name,
        "dataset": {"name": "synthetic",
                    "options": {"num_videos": 8, "val_videos": 2, "frame_size": args.frame_size,
                                "min_phase_frames": 4, "max_phase_frames": 8}},
        "task": "phase",
        "model": {"backbone": "test_resnet", "temporal_head": {"type": "lstm", "hidden_size": 32}},
        "budget": {"epochs": args.epochs, "steps_per_epoch": args.steps},
        "resources": {"workers": workers, "cpus_per_worker": 1, "gpus_per_worker": 0},
        "searcher": {"type": "grid"},
        "seeds": list(range(trials)),
        "metric": {"name": "val_accuracy", "mode": "max"},
        "search_space": {"name": "overhead",
                         "factors": {"norm": ["batch"], "frozen_stages": [0],
                                     "seq_len": [args.seq_len], "videos_per_batch": [2]}},
    }


class StampedStream(io.TextIOBase):
    """A text stream that records (time.time(), line) for every line written to it."""

    def __init__(self, echo: bool, t_ref: float):
        self.lines: list[tuple[float, str]] = []
        self.echo, self.t_ref = echo, t_ref
        self._buf, self._t_first = "", None

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if self._t_first is None and s:
            self._t_first = time.time()
        self._buf += s
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            t = self._t_first if self._t_first is not None else time.time()
            self.lines.append((t, line))
            if self.echo:
                print(f"    {t - self.t_ref:6.1f}s  {line}", flush=True)
            self._t_first = time.time() if self._buf else None
        return len(s)

    def trial_events(self) -> dict[str, dict[str, float]]:
        """trial_id -> {"start": first line naming it, "end": its DONE/FAILED line}."""
        events: dict[str, dict[str, float]] = {}
        for t, line in self.lines:
            m = CONSOLE_LINE.search(line)
            if not m:
                continue
            ev = events.setdefault(m.group(1), {"start": t})
            if m.group(2) in ("DONE", "FAILED"):
                ev["end"] = t
        return events


def import_costs() -> list[tuple[str, float]]:
    """Cumulative import times in a fresh interpreter (what a new Ray actor pays)."""
    code = ("import json, time\n"
            f"out = []\nfor m in {IMPORTS!r}:\n"
            "    t = time.perf_counter(); __import__(m); out.append((m, time.perf_counter() - t))\n"
            "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return [tuple(x) for x in json.loads(proc.stdout.strip().splitlines()[-1])]


def plain_runs(spec) -> dict[int, dict]:
    """`train()` directly in this process for each seed of the study: seed -> figures."""
    import torch

    from pitfalls.config import TrialConfig
    from pitfalls.train import train

    torch.set_num_threads(1)
    factors = {k: v[0] for k, v in spec.search_space.factors}
    for name in spec.search_space.linked:  # a linked factor's first level: its parameters
        factors.update(factors.pop(name))
    out = {}
    for seed in spec.seeds:
        params = spec.trial_params({**factors, "seed": seed})
        reports: list[tuple[float, dict]] = []
        t_call = time.time()
        train(TrialConfig(spec, params),
              report=lambda m, c, out=reports: out.append((time.time(), dict(m))))
        t_end = time.time()
        t_step1 = reports[0][0] - reports[0][1]["epoch_s"]
        out[seed] = {"call_to_step1": t_step1 - t_call, "wall": t_end - t_call,
                     "epochs_s": sum(m["epoch_s"] for _, m in reports),
                     "fps": statistics.median(m["train_frames_per_s"] for _, m in reports)}
    return out


def _plain_worker(args: argparse.Namespace) -> int:
    """Child process of `plain_concurrent`: import, say READY, wait for GO, train one seed."""
    import torch

    from pitfalls.config import parse_study

    spec = parse_study(study_dict(args, "overhead1w", 1, args.trials))
    torch.set_num_threads(1)
    print("READY", flush=True)
    sys.stdin.readline()
    spec = dataclasses.replace(spec, seeds=(args.plain_worker,))
    print(json.dumps(plain_runs(spec)[args.plain_worker]), flush=True)
    return 0


def plain_concurrent(args: argparse.Namespace, seeds: list[int]) -> list[dict]:
    """`len(seeds)` plain processes training at the same moment (1 thread each)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--trials", str(args.trials),
           "--epochs", str(args.epochs), "--steps", str(args.steps), "--seq-len", str(args.seq_len),
           "--frame-size", str(args.frame_size)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([*cmd, "--plain-worker", str(s)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for s in seeds]
    for p in procs:
        while (line := p.stdout.readline()) and line.strip() != "READY":
            pass
    for p in procs:
        p.stdin.write("GO\n")
        p.stdin.flush()
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=600)
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def collect_trials(study_dir: Path, stream: StampedStream) -> list[dict]:
    """Join results.parquet, MLflow runs, Tune result.json and the console timestamps."""
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient

    from pitfalls.sweep.tracking import ROLE_TAG, TRIAL_TAG

    rows = {r["trial_id"]: r for r in pq.read_table(study_dir / "results.parquet").to_pylist()}
    pids = {}
    for f in (study_dir / "tune").glob("*/result.json"):
        first = f.read_text().splitlines()[:1]
        if first:
            r = json.loads(first[0])
            pids[r.get("trial_id")] = r.get("pid")
    state = json.loads((study_dir / "state.json").read_text())
    client = MlflowClient(state["tracking_uri"])
    runs = {r.data.tags[TRIAL_TAG]: r for r in client.search_runs(
        [state["experiment_id"]], f"tags.`{ROLE_TAG}` = 'trial'")}
    events = stream.trial_events()
    trials = []
    for tid, row in rows.items():
        run = runs.get(tid)
        ev = events.get(tid, {})
        rec = {"trial_id": tid, "seed": row["seed"], "status": row["status"],
               "duration_s": row["duration_s"], "pid": pids.get(tid),
               "start": ev.get("start"), "end": ev.get("end"), "fn": None, "step1": None,
               "epochs_s": None, "fps": None}
        if run is not None:
            rec["fn"] = run.info.start_time / 1000
            hist = sorted(client.get_metric_history(run.info.run_id, "epoch_s"), key=lambda m: m.step)
            fps = client.get_metric_history(run.info.run_id, "train_frames_per_s")
            if hist:
                rec["step1"] = hist[0].timestamp / 1000 - hist[0].value
                rec["epochs_s"] = sum(m.value for m in hist)
            if fps:
                rec["fps"] = statistics.median(m.value for m in fps)
        trials.append(rec)
    return sorted(trials, key=lambda r: (r["start"] or float("inf"), r["trial_id"]))


def run_platform(spec, study_dir: Path, echo: bool) -> dict:
    from pitfalls.sweep.driver import run_study
    from pitfalls.sweep.tracking import default_tracking_uri

    t_call = time.time()
    stream = StampedStream(echo, t_call)
    outcome = run_study(spec, study_dir, tracking_uri=default_tracking_uri(study_dir), out=stream)
    t_done = time.time()
    trials = collect_trials(study_dir, stream)
    log = study_dir / "logs" / "ray.log"
    log_lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    ready = [t for t, line in stream.lines if line.startswith("mlflow:")]
    return {"t_call": t_call, "wall": t_done - t_call, "t_done": t_done, "trials": trials,
            "t_ready": ready[0] if ready else None,
            "completed": outcome.completed, "failed": outcome.failed,
            "log_lines": len(log_lines),
            "log_problems": sum(1 for ln in log_lines if " WARNING " in ln or " ERROR " in ln)}


def ray_session_facts(tmp: Path) -> list[str]:
    """What Ray's own session logs say about worker start-up (read before the temp dir goes)."""
    facts = []
    for logs in sorted(tmp.glob("ray/session_2*/logs")):
        raylet_out = (logs / "raylet.out").read_text(errors="replace") if (logs / "raylet.out").exists() else ""
        started = raylet_out.count("Started worker process with pid")
        facts.append(f"Ray worker processes started in the session: {started}")
        err = (logs / "raylet.err").read_text(errors="replace") if (logs / "raylet.err").exists() else ""
        if "Creating virtual environment" in err or "Installed" in err:
            facts.append("Ray's uv integration is active: workers start with `uv run` in a copy of the "
                         "working directory and a fresh .venv (see the session's logs/raylet.err)")
    return facts


def fmt(v, spec: str = "6.1f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-".rjust(len(format(0.0, spec)))


def _delta(r: dict, a: str, b: str) -> float | None:
    return r[b] - r[a] if r[a] is not None and r[b] is not None else None


def print_study(title: str, res: dict, plain: dict[int, dict] | None, slots: int) -> None:
    t0 = res["t_call"]
    trials = res["trials"]
    print(f"\n{title}: {res['completed']} completed, {res['failed']} failed, "
          f"run_study wall {res['wall']:.1f} s")
    print("  times in s; start@ = Tune's on_trial_start, since run_study was called; gap = from the "
          "previous trial's end to this start\n  (actor spawn or reset, not in duration_s); fn = trial "
          "function entered (MLflow run start); step1 = first training step")
    print("  trial        seed  actor | start@   gap | start->fn  fn->step1  start->step1 | epochs "
          "duration overhead | fps plat  fps plain  ratio")
    pid_names: dict = {}
    for r in trials:
        actor = pid_names.setdefault(r["pid"], f"A{len(pid_names) + 1}") if r["pid"] else "-"
        p = (plain or {}).get(r["seed"])
        ratio = r["fps"] / p["fps"] if p and r["fps"] else None
        overhead = r["duration_s"] - r["epochs_s"] if r["epochs_s"] is not None else None
        ended = [q["end"] for q in trials if q.get("end") and r["start"] and q["end"] <= r["start"]]
        gap = r["start"] - max(ended) if ended else None
        print(f"  {r['trial_id'][:11]:<11} {r['seed']:>4} {actor:>6} | "
              f"{fmt(r['start'] - t0 if r['start'] else None)} {fmt(gap, '5.1f')} | "
              f"{fmt(_delta(r, 'start', 'fn'), '9.2f')}"
              f"  {fmt(_delta(r, 'fn', 'step1'), '9.2f')}  {fmt(_delta(r, 'start', 'step1'), '12.2f')} | "
              f"{fmt(r['epochs_s'])} {fmt(r['duration_s'], '8.1f')} {fmt(overhead, '8.1f')} | "
              f"{fmt(r['fps'], '8.0f')}  {fmt(p['fps'] if p else None, '9.0f')}  {fmt(ratio, '5.2f')}")
    starts = [r["start"] for r in trials if r["start"]]
    steps = [r["step1"] for r in trials if r["step1"]]
    ends = [r["end"] for r in trials if r.get("end")]
    busy = sum(r["epochs_s"] or 0 for r in trials)
    if res["t_ready"]:
        print(f"  run_study -> study dir + MLflow store and parent run ready: {res['t_ready'] - t0:.1f} s")
    if starts and steps:
        print(f"  run_study -> first trial start (Tuner setup, actor spawn + imports): "
              f"{min(starts) - t0:.1f} s; -> first training step: {min(steps) - t0:.1f} s")
    if ends:
        print(f"  last trial done -> run_study returns: {res['t_done'] - max(ends):.1f} s")
    print(f"  training (sum of epoch_s) / (run_study wall x {slots} slots): {busy:.1f} / "
          f"{res['wall'] * slots:.1f} s = {100 * busy / (res['wall'] * slots):.0f} %")
    print(f"  ray.log: {res['log_lines']} lines, {res['log_problems']} WARNING/ERROR")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=4, help="trials of the 1-worker study (default 4)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40, help="steps per epoch")
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--frame-size", type=int, default=32)
    ap.add_argument("--multi-worker", action="store_true",
                    help="also run a study of 2-worker (Ray Train) trials")
    ap.add_argument("--mw-trials", type=int, default=2, help="trials of the 2-worker study")
    ap.add_argument("--skip-imports", action="store_true", help="skip the fresh-process import timing")
    ap.add_argument("--quiet", action="store_true", help="do not echo the studies' progress lines")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory and print it")
    ap.add_argument("--plain-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.plain_worker is not None:
        return _plain_worker(args)

    tmp = Path(tempfile.mkdtemp(prefix="pitfalls-bench-"))
    os.environ["RAY_TMPDIR"] = str(tmp)  # Ray's session files (tmp/ray/session_*) stay in it too
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    t_begin = time.time()
    try:
        imports = [] if args.skip_imports else import_costs()

        from pitfalls.config import parse_study

        spec = parse_study(study_dict(args, "overhead1w", 1, args.trials))
        print(f"plain loop: {len(spec.seeds)} x train() in this process, 1 thread ...", flush=True)
        plain = plain_runs(spec)
        print("plain loop: 2 processes at once, 1 thread each ...", flush=True)
        plain2 = plain_concurrent(args, list(spec.seeds[:2]) if len(spec.seeds) > 1 else [0, 0])

        # mlflow configures its loggers when imported: import it (via the driver) before
        # init_ray routes them to the study's ray.log, as `pitfalls run` does
        import pitfalls.sweep.driver  # noqa: F401
        from pitfalls.sweep.runtime import init_ray

        study_dir = tmp / "studies" / spec.name
        t = time.time()
        init_ray(None, study_dir / "logs" / "ray.log")  # run_study reuses it (same call inside)
        ray_init_s = time.time() - t
        print(f"study {spec.name} ...", flush=True)
        res1 = run_platform(spec, study_dir, echo=not args.quiet)

        res2 = spec2 = None
        if args.multi_worker:
            spec2 = parse_study(study_dict(args, "overhead2w", 2, args.mw_trials))
            print(f"study {spec2.name} ...", flush=True)
            res2 = run_platform(spec2, tmp / "studies" / spec2.name, echo=not args.quiet)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()

    print("\n=== trial overhead benchmark", time.strftime("%Y-%m-%d %H:%M"),
          f"({os.cpu_count()} CPUs; budget {args.epochs} epochs x {args.steps} steps, "
          f"batch 2 videos x {args.seq_len} frames of {args.frame_size}px, test_resnet) ===")
    if imports:
        total = sum(s for _, s in imports)
        print("\nfresh-process imports (cumulative order, s): "
              + ", ".join(f"{m} {s:.1f}" for m, s in imports) + f"; total {total:.1f}")
    p = list(plain.values())
    print(f"\nplain loop (train() in-process, {len(p)} runs): call->step1 "
          f"{statistics.median(x['call_to_step1'] for x in p):.2f} s (median), "
          f"train() wall {statistics.median(x['wall'] for x in p):.2f} s (median), "
          f"{statistics.median(x['fps'] for x in p):.0f} frames/s (median)")
    print("plain loop x2 (2 processes training at once): "
          + ", ".join(f"{x['fps']:.0f}" for x in plain2) + " frames/s")
    print(f"ray.init (local, 2 CPUs): {ray_init_s:.1f} s")
    print_study(f"1-worker study ({len(spec.seeds)} trials, in-process trials, reuse_actors)",
                res1, plain, slots=2)
    if res2 is not None:
        print_study(f"2-worker study ({len(spec2.seeds)} trials, Ray Train TorchTrainer; "
                    "'ratio' = 2-worker DDP vs 1-process plain)", res2, plain, slots=2)

    print("\nsummary")
    rows = [("ray.init", ray_init_s)]
    for name, res in (("1-worker", res1), ("2-worker", res2)):
        if res is None:
            continue
        ok = [r for r in res["trials"] if r["start"] and r["step1"] and r["fn"]]
        if ok:
            first = min(ok, key=lambda r: r["start"])
            later = [r["step1"] - r["start"] for r in ok if r is not first]
            rows.append((f"{name}: run_study -> 1st training step", first["step1"] - res["t_call"]))
            rows.append((f"{name}: start->step1, first trial", first["step1"] - first["start"]))
            if later:
                rows.append((f"{name}: start->step1, other trials (median)", statistics.median(later)))
            over = [r["duration_s"] - r["epochs_s"] for r in ok]
            rows.append((f"{name}: overhead/trial (duration - epochs, median)", statistics.median(over)))
            rows.append((f"{name}: run_study wall", res["wall"]))
            fps = [r["fps"] for r in ok if r["fps"]]
            if fps:
                rows.append((f"{name}: frames/s in platform (median)", statistics.median(fps)))
    rows.append(("plain: call->step1 (median)", statistics.median(x["call_to_step1"] for x in p)))
    rows.append(("plain: frames/s, 1 process (median)", statistics.median(x["fps"] for x in p)))
    rows.append(("plain: frames/s, 2 processes at once (median)",
                 statistics.median(x["fps"] for x in plain2)))
    fps1 = [r["fps"] for r in res1["trials"] if r["fps"]]
    if fps1:
        rows.append(("ratio 1-worker platform / plain 1 process",
                     statistics.median(fps1) / statistics.median(x["fps"] for x in p)))
        rows.append(("ratio 1-worker platform / plain 2 processes at once",
                     statistics.median(fps1) / statistics.median(x["fps"] for x in plain2)))
    rows.append(("benchmark wall (all of the above)", time.time() - t_begin))
    for label, v in rows:
        print(f"  {label:<52} {v:8.2f}")

    for fact in ray_session_facts(tmp):
        print(f"  note: {fact}")
    if args.keep:
        print(f"\nkept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
