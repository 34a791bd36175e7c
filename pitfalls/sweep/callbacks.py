"""Driver-side Tune callbacks: one concise console line per trial event, and result rows."""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import TextIO

from ray.tune import Callback

from pitfalls.config import StudySpec
from pitfalls.results.schema import companion_metric
from pitfalls.results.store import (
    RESULTS_FILE,
    compact,
    compacted_rows,
    read_study_results,
    row_files,
    trial_row,
    write_row,
)
from pitfalls.sweep.storage import HISTORY_FILE, StudyStorage, bound, bound_spec


def _short(config: dict, keys: list[str]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={fmt(config[k])}" for k in keys if k in config)


def _tell_optuna() -> None:
    """Optuna hears of a trial's end only after its row is written (`optuna_search.tell_untold`;
    nothing waits in a grid study, and Optuna is not imported for one)."""
    import sys

    module = sys.modules.get("pitfalls.sweep.optuna_search")
    if module is not None:
        module.tell_untold()


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        lines = [ln for ln in Path(path).read_text().strip().splitlines() if ln.strip()]
        return lines[-1] if lines else "unknown error"
    return str(getattr(trial, "error_msg", None) or "unknown error")


class ConsoleProgress(Callback):
    """Prints `[k/N] trial params | status epoch e/E metric=v` lines instead of Tune's tables."""

    def __init__(self, spec: StudySpec, out: TextIO | None = None):
        self.spec, self.out = spec, out or sys.stdout
        self.keys = [*spec.search_space.varied_params, "seed"]
        if spec.searcher.type == "optuna":
            self.keys += [n for n, _ in spec.search_space.nuisance]
        self.index: dict[str, int] = {}

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks into the study's state: not the stream (it may not pickle,
        and a resumed driver prints to its own stdout)."""
        return {k: v for k, v in self.__dict__.items() if k != "out"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, out=sys.stdout)
        self.spec = bound_spec(self.spec)

    def _line(self, trial, status: str, detail: str) -> None:
        k = self.index.setdefault(trial.trial_id, len(self.index) + 1)
        config = self.spec.search_space.expand(trial.config)
        print(f"[{k:>3}/{self.spec.num_trials}] {trial.trial_id} {_short(config, self.keys)}"
              f" | {status:<9} {detail}", file=self.out, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._line(trial, "RUNNING", "")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        m = self.spec.metric.selection
        epochs = self.spec.budget.total_epochs(self.spec.trial_params(trial.config).training)
        stage = f" (stage {result['stage']})" if "stage" in result else ""
        self._line(trial, "RUNNING", f"epoch {result.get('epoch')}/{epochs}{stage} "
                                     f"{m}={result.get(m, float('nan')):.4f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        selection = self.spec.metric.selection  # and the same score on the test split, if measured
        shown = [m for m in dict.fromkeys([selection, self.spec.metric.name, companion_metric(selection)])
                 if m == selection or m in last]
        self._line(trial, "DONE", " ".join(f"{m}={last.get(m, float('nan')):.4f}" for m in shown))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "FAILED", _error_text(trial)[:200])


def _plain(result: dict) -> dict:
    """The JSON-able scalars of a Tune result (our metrics; Tune's own keys are harmless)."""
    return {k: v for k, v in result.items()
            if isinstance(v, (int, float, str, bool)) and not k.startswith("config")}


class ResultsRecorder(Callback):
    """Collects each trial's epoch reports and records a row per trial as it finishes.

    Every report is also appended to `history.jsonl` in the study directory, so a resumed study
    (a new driver process) still has the epochs reported before the interruption; epochs are
    keyed by number, so an epoch re-run after a restart replaces its earlier report.

    What a trial costs to record does not grow with the study: its row is a file of its own
    (`results.d/`), folded into results.parquet whenever the unfolded rows are as many as the
    folded ones (so each row is rewritten about twice in all) and once more when the study's run
    ends (`compact`); a trial's duration sums only its own sessions. On object storage only
    what changed is uploaded: the new lines of the history, the new row file, and results.parquet
    when it is folded.
    """

    def __init__(self, spec: StudySpec, storage: StudyStorage):
        self.spec, self.storage = spec, storage
        self._reset()

    def _reset(self) -> None:
        self.session = uuid.uuid4().hex[:8]
        self.history: dict[str, dict[int, dict]] = {}
        self.spans: dict[str, dict[str, list[float]]] = {}  # trial -> session -> [first, last]
        self.rows: dict[str, dict] = {}
        self.pending: set[str] = set()  # row files not folded into results.parquet yet
        self.compacted = 0  # rows in results.parquet
        self.uploaded = 0  # bytes of history.jsonl the bucket holds

    @property
    def path(self) -> Path:
        return self.storage.local / RESULTS_FILE

    @property
    def history_path(self) -> Path:
        return self.storage.local / HISTORY_FILE

    def setup(self, **info):
        """Load what earlier sessions of this study recorded (nothing for a new study). A resumed
        study gets this object back from Tune's pickled state: a new session starts here."""
        self.storage = bound(getattr(self, "storage", None))  # this driver's, not the pickled one's
        self.spec = bound_spec(self.spec)
        self._reset()
        study_dir = self.storage.local
        self.rows = {r["trial_id"]: r for r in read_study_results(study_dir).to_pylist()}
        self.pending, self.compacted = set(row_files(study_dir)), compacted_rows(study_dir)
        if self.history_path.exists():
            for line in self.history_path.read_text().splitlines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                self._apply(event)
        self._catch_up()

    def _catch_up(self) -> None:
        """A working copy newer than the bucket (its driver was killed before uploading
        everything; `StudyStorage.pull` kept it): upload what the bucket is missing."""
        if not self.storage.remote:
            return
        self.uploaded = self.storage.pushed_size(HISTORY_FILE)
        if self.history_path.is_file() and self.history_path.stat().st_size > self.uploaded:
            self.storage.push(RESULTS_FILE, *sorted(self.pending))
            self._upload_history()

    def compact(self) -> None:
        """Fold the pending row files into results.parquet, here and in the bucket; what the
        driver calls when a study's run ends (after `setup`), so results.parquet is complete.

        In the bucket, results.parquet is replaced before the row files it absorbed go.
        """
        absorbed = compact(self.storage.local)
        if absorbed:
            self.storage.push(RESULTS_FILE)
            self.storage.delete(*absorbed)
        self.pending -= set(absorbed)
        self.compacted = compacted_rows(self.storage.local)

    def _apply(self, event: dict) -> None:
        tid, t = event["trial_id"], event["time"]
        span = self.spans.setdefault(tid, {}).setdefault(event["session"], [t, t])
        span[0], span[1] = min(span[0], t), max(span[1], t)
        for metrics in event.get("epochs", []):
            self.history.setdefault(tid, {})[int(metrics["epoch"])] = metrics

    def _upload_history(self) -> None:
        self.uploaded = self.storage.push_tail(HISTORY_FILE, self.uploaded)

    def _event(self, trial, epochs: list[dict], upload: bool = True) -> None:
        event = {"trial_id": trial.trial_id, "session": self.session, "time": time.time(),
                 "epochs": epochs}
        self._apply(event)
        with self.history_path.open("a") as f:
            f.write(json.dumps(event) + "\n")
        if upload:
            self._upload_history()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._event(trial, [])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        epochs = [_plain(h) for h in result.get("history", [])] or [_plain(result)]
        self._event(trial, [e for e in epochs if "epoch" in e])

    def _record(self, trial, status: str, error: str | None) -> None:
        """The trial's row file, then (geometrically) a fold into results.parquet.

        The bucket gets the row before the history's last event: a bucket whose history is as
        long as the working copy's holds every row, so `pull` may replace the working copy.
        """
        tid = trial.trial_id
        self._event(trial, [], upload=False)
        history = [m for _, m in sorted(self.history.get(tid, {}).items())]
        duration = sum(b - a for a, b in self.spans.get(tid, {}).values())
        params = self.spec.recorded_params(trial.config)  # a linked level: its parameters
        self.rows[tid] = trial_row(self.spec.name, tid, params, history, status=status, error=error,
                                   duration_s=duration, workers=self.spec.resources.workers)
        name = write_row(self.storage.local, self.rows[tid])
        self.storage.push(name)
        self._upload_history()
        self.pending.add(name)
        if len(self.pending) >= self.compacted:
            self.compact()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial, "completed", None)
        _tell_optuna()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, "failed", _error_text(trial))
        _tell_optuna()
