"""Optuna's storage ahead of Tune's state (a driver killed between the two): the searcher never
reports to a finished Optuna trial, finds a trial its pickle lacks, and `settle` closes what a
finished study left RUNNING (real sqlite storage)."""

from __future__ import annotations

import optuna
import pytest
from ray import tune

from pitfalls.sweep import optuna_search
from pitfalls.sweep.optuna_search import ORPHAN_ATTR, TRIAL_ATTR, StudyOptunaSearch, settle, tell_untold


@pytest.fixture
def searcher(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    s = StudyOptunaSearch(space={"lr": tune.loguniform(1e-4, 1e-2)}, metric="val_accuracy", mode="max",
                          storage=optuna.storages.RDBStorage(url), study_name="study-1234",
                          sampler=optuna.samplers.RandomSampler(seed=0))
    return s, url


def _result(value: float, it: int = 1) -> dict:
    return {"val_accuracy": value, "training_iteration": it}


def test_a_trial_told_complete_before_the_kill_is_not_reported_to_again(searcher):
    s, url = searcher
    s.suggest("t1")
    s.on_trial_result("t1", _result(0.5))
    s.on_trial_complete("t1", _result(0.6, 2))
    tell_untold()  # what the results recorder calls once its row is written
    study = optuna.load_study(study_name="study-1234", storage=url)
    assert study.trials[0].user_attrs[TRIAL_ATTR] == "t1"
    # the resumed driver: its searcher (from an older pickle) does not know t1 was told
    s._completed_trials.clear()
    s.on_trial_result("t1", _result(0.6, 2))  # raised UpdateFinishedTrialError before
    s.on_trial_complete("t1", _result(0.6, 2))
    tell_untold()  # what the results recorder calls once its row is written
    trial = optuna.load_study(study_name="study-1234", storage=url).trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.6


def test_optuna_hears_of_a_trial_end_only_after_its_results_row(searcher):
    """Tune tells its searcher before its callbacks write the results row: a kill in between
    left a trial COMPLETE in Optuna that no row held. The tell now waits for the recorder."""
    s, url = searcher
    s.suggest("t1")
    s.on_trial_complete("t1", _result(0.6, 2))  # Tune's order: the searcher first ...
    trial = optuna.load_study(study_name="study-1234", storage=url).trials[0]
    assert trial.state == optuna.trial.TrialState.RUNNING  # ... a kill here: settle closes it
    tell_untold()  # ... then the recorder, after its row
    trial = optuna.load_study(study_name="study-1234", storage=url).trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.6
    s.on_trial_complete("t2", _result(0.1))  # never suggested: nothing to tell, nothing raised
    s.suggest("t3")  # a suggestion tells what waits first
    assert not optuna_search._UNTOLD


def test_a_trial_its_pickle_lacks_is_found_by_its_tune_id(searcher):
    s, url = searcher
    s.suggest("t1")
    s._ot_trials.clear()  # Tune's experiment state has t1, the searcher's older pickle does not
    s.on_trial_result("t1", _result(0.4))
    s.on_trial_complete("t1", _result(0.7, 2))
    tell_untold()  # what the results recorder calls once its row is written
    trial = optuna.load_study(study_name="study-1234", storage=url).trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.7
    assert trial.intermediate_values == {1: 0.4}


def test_settle_closes_what_a_finished_study_left_running(searcher):
    s, url = searcher
    for tid in ("told", "untold", "failed"):
        s.suggest(tid)
    s.on_trial_complete("told", _result(0.9))
    tell_untold()  # what the results recorder calls once its row is written
    study = optuna.load_study(study_name="study-1234", storage=url)
    study.ask()  # asked just before a kill: Tune never ran it, it has no Tune id
    rows = {"told": {"status": "completed", "final_val_accuracy": 0.9},
            "untold": {"status": "completed", "final_val_accuracy": 0.8},  # killed before `tell`
            "failed": {"status": "failed", "final_val_accuracy": None}}
    assert settle(url, ["unknown-id", "study-1234"], rows, "val_accuracy") == {"COMPLETE": 1, "FAIL": 2}
    trials = {t.user_attrs.get(TRIAL_ATTR): t for t in optuna.load_study(study_name="study-1234", storage=url).trials}
    assert trials["untold"].state == optuna.trial.TrialState.COMPLETE and trials["untold"].value == 0.8
    assert trials["failed"].state == optuna.trial.TrialState.FAIL
    assert trials[None].state == optuna.trial.TrialState.FAIL and trials[None].user_attrs[ORPHAN_ATTR]
    assert settle(url, ["study-1234"], rows, "val_accuracy") == {"COMPLETE": 0, "FAIL": 0}
    assert settle(url, ["no-such-study"], rows, "val_accuracy") == {"COMPLETE": 0, "FAIL": 0}


def test_a_finished_trial_tunes_snapshot_never_saw_counts_toward_the_samples(tmp_path):
    """Created and finished between two of Tune's snapshots, then the driver killed: the study's
    records have it, Tune's state does not; a restored Tune must sample one trial fewer."""
    import json

    import ray.cloudpickle as cloudpickle

    from pitfalls.sweep.storage import atomic_local_fs, count_unseen_finished_trials, tune_trial_ids

    tune_dir = tmp_path / "tune"
    tune_dir.mkdir()
    entries = [[json.dumps({"trial_id": t, "status": "TERMINATED"}), "{}"] for t in ("a", "b")]
    (tune_dir / "experiment_state-2026-12-01_10-00-00.json").write_text(json.dumps({"trial_data": entries}))
    gen = tune_dir / "search_gen_state-2026-12-01_10-00-00.json"
    gen.write_bytes(cloudpickle.dumps({"counter": 2, "total_samples": 6, "finished": False}))
    fs = atomic_local_fs()
    assert tune_trial_ids(fs, str(tune_dir)) == {"a", "b"}
    assert count_unseen_finished_trials(fs, str(tune_dir), {"a", "b", "lost"}) == 1
    assert cloudpickle.loads(gen.read_bytes())["counter"] == 3
    assert count_unseen_finished_trials(fs, str(tune_dir), {"a"}) == 0  # nothing unseen: unchanged
    assert cloudpickle.loads(gen.read_bytes())["counter"] == 3


def test_a_restored_searcher_does_not_replay_its_pickled_random_state(searcher, tmp_path):
    s, _ = searcher
    s.save(str(tmp_path / "searcher.pkl"))
    first = s.suggest("t1")
    s.restore(str(tmp_path / "searcher.pkl"))  # the pickle from before t1 was sampled
    assert s.suggest("t2") != first
