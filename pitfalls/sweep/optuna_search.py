"""Optuna as Tune's searcher, made safe to resume: Optuna's storage is the record of what it
asked and was told, and a driver killed at any point must not make the two disagree for good.

Tune pickles its searcher (with Optuna's trial objects) next to its experiment state, and Optuna
writes every `ask`/`report`/`tell` straight to its database. A driver killed in between leaves
Optuna's storage ahead of Tune's state:
- a trial Optuna holds as COMPLETE that Tune restarts (it had not recorded the end): its
  reports would raise `UpdateFinishedTrialError` and end the resumed study;
- a trial Tune's state does not know (asked just before the kill): RUNNING in Optuna forever;
- a trial Tune's pickled searcher lacks although its experiment state has it.
`StudyOptunaSearch` tags each Optuna trial with its Tune trial id, never reports to a finished
Optuna trial, finds a trial its pickle lacks by that tag, and `settle` closes what is left open
once the study has ended.
"""

from __future__ import annotations

import logging

from ray.tune.search.optuna import OptunaSearch

TRIAL_ATTR = "pitfalls.trial_id"  # Optuna user attribute: the Tune trial this Optuna trial is
ORPHAN_ATTR = "pitfalls.orphaned"
_log = logging.getLogger(__name__)


class StudyOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, resumable after a kill at any point (see the module docstring)."""

    def suggest(self, trial_id: str):
        tell_untold()  # the sampler sees every finished trial
        params = super().suggest(trial_id)
        if params is not None and trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(TRIAL_ATTR, trial_id)
        return params

    def restore(self, checkpoint_path: str):
        """The pickled searcher, with its sampler's random state drawn afresh: the pickle may be
        older than trials sampled since (a kill between Tune's snapshots), and replaying its
        random state would sample their parameters again."""
        super().restore(checkpoint_path)
        for sampler in {id(s): s for s in (self._sampler, getattr(self._ot_study, "sampler", None))
                        if s is not None}.values():
            sampler.reseed_rng()

    def _open_trial(self, trial_id: str):
        """The trial's Optuna trial while Optuna still takes reports for it, else None."""
        import optuna

        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:  # Tune's state knows the trial, its pickled searcher does not
            found = [t for t in self._ot_study.get_trials(deepcopy=False)
                     if t.user_attrs.get(TRIAL_ATTR) == trial_id]
            if not found:
                _log.warning("optuna: trial %s has no Optuna trial; its results are not told", trial_id)
                return None
            ot_trial = optuna.trial.Trial(self._ot_study, found[0]._trial_id)
            self._ot_trials[trial_id] = ot_trial
        state = self._ot_study._storage.get_trial(ot_trial._trial_id).state
        return None if state.is_finished() else ot_trial

    def on_trial_result(self, trial_id: str, result: dict):
        if trial_id in self._completed_trials or self._open_trial(trial_id) is None:
            return  # e.g. told COMPLETE by a driver killed before Tune recorded the end
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        """Told once the study's results hold the trial (`tell_untold`, which the results
        recorder calls after writing its row; also before the next `suggest`): Tune tells its
        searcher before its callbacks run, and a driver killed in between left a trial
        COMPLETE in Optuna that no results row held, so a resume sampled a replacement."""
        _UNTOLD.append((self, trial_id, result, error))

    def _tell(self, trial_id: str, result: dict | None, error: bool) -> None:
        if trial_id not in self._completed_trials and self._open_trial(trial_id) is None:
            self._completed_trials.add(trial_id)  # already told: a second tell would fail
            return
        super().on_trial_complete(trial_id, result, error)


# completions waiting for their tell, in this (the driver's) process: (searcher, trial, result, error)
_UNTOLD: list[tuple[StudyOptunaSearch, str, dict | None, bool]] = []


def tell_untold() -> None:
    """Tell Optuna the completions Tune reported; called once their results rows are written.
    A driver killed before leaves them RUNNING in Optuna, and `settle` closes them with the
    recorded values."""
    while _UNTOLD:
        searcher, trial_id, result, error = _UNTOLD.pop(0)
        searcher._tell(trial_id, result, error)


def settle(storage_url: str, study_names: list[str], rows: dict[str, dict], metric: str) -> dict[str, int]:
    """Close the Optuna trials a finished study left RUNNING (its driver was killed between a
    trial's end and Optuna's `tell`, or just after an `ask`): COMPLETE with the recorded value
    when the study's results hold the trial as completed, else FAIL (marked orphaned).
    The study is the first of `study_names` the storage holds. Returns the number of trials
    closed per state."""
    import optuna

    closed = {"COMPLETE": 0, "FAIL": 0}
    held = {s.study_name for s in optuna.get_all_study_summaries(storage_url, include_best_trial=False)}
    name = next((n for n in study_names if n in held), None)
    if name is None:
        return closed
    study = optuna.load_study(study_name=name, storage=storage_url)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        row = rows.get(trial.user_attrs.get(TRIAL_ATTR, ""), {})
        value = row.get(f"final_{metric}") if row.get("status") == "completed" else None
        if value is None:
            study._storage.set_trial_user_attr(trial._trial_id, ORPHAN_ATTR, True)
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            closed["FAIL"] += 1
        else:
            study.tell(trial.number, float(value))
            closed["COMPLETE"] += 1
    return closed
