"""Driver-side Tune callbacks: one concise console line per trial event, and result rows."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from ray.tune import Callback

from pitfalls.config import StudySpec
from pitfalls.results.schema import PARAM_NAMES
from pitfalls.results.store import trial_row, write_results



def _short(config: dict, keys: list[str]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={fmt(config[k])}" for k in keys if k in config)


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        lines = [ln for ln in Path(path).read_text().strip().splitlines() if ln.strip()]
        return lines[-1] if lines else "unknown error"
    return str(getattr(trial, "error_msg", None) or "unknown error")


class ConsoleProgress(Callback):
    """Prints `[k/N] trial params | status epoch e/E metric=v` lines instead of Tune's tables."""

    def __init__(self, spec: StudySpec, out: TextIO = sys.stdout):
        self.spec, self.out = spec, out
        self.keys = [*spec.search_space.varied_factors, "seed"]
        if spec.searcher.type == "optuna":
            self.keys += [n for n, _ in spec.search_space.nuisance]
        self.index: dict[str, int] = {}

    def _line(self, trial, status: str, detail: str) -> None:
        k = self.index.setdefault(trial.trial_id, len(self.index) + 1)
        print(f"[{k:>3}/{self.spec.num_trials}] {trial.trial_id} {_short(trial.config, self.keys)}"
              f" | {status:<9} {detail}", file=self.out, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._line(trial, "RUNNING", "")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        m = self.spec.metric.name
        self._line(trial, "RUNNING", f"epoch {result.get('epoch')}/{self.spec.budget.epochs} "
                                     f"{m}={result.get(m, float('nan')):.4f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        m = self.spec.metric.name
        last = trial.last_result or {}
        self._line(trial, "DONE", f"{m}={last.get(m, float('nan')):.4f}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "FAILED", _error_text(trial)[:200])


class ResultsRecorder(Callback):
    """Collects each trial's epoch reports and rewrites results.parquet as trials finish."""

    def __init__(self, spec: StudySpec, path: Path):
        self.spec, self.path = spec, path
        self.history: dict[str, list[dict]] = {}
        self.started: dict[str, float] = {}
        self.rows: dict[str, dict] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.setdefault(trial.trial_id, time.time())
        self.history[trial.trial_id] = []  # a restarted trial reports its epochs again

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.history.setdefault(trial.trial_id, []).append(dict(result))

    def _record(self, trial, status: str, error: str | None) -> None:
        tid = trial.trial_id
        self.rows[tid] = trial_row(
            self.spec.name, tid, {k: v for k, v in trial.config.items() if k in PARAM_NAMES},
            self.history.get(tid, []), status=status, error=error,
            duration_s=time.time() - self.started.get(tid, time.time()),
            workers=self.spec.resources.workers)
        write_results(self.path, list(self.rows.values()))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial, "completed", None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, "failed", _error_text(trial))
