"""A trial whose final checkpoint was saved before the driver died still gives Tune its metric."""

import pytest

from pitfalls.sweep.trial import already_finished, tune_metrics


def _state(epoch: int) -> dict:
    history = [{"epoch": e, "val_accuracy": 0.1 * e} for e in range(1, epoch + 1)]
    return {"epoch": epoch, "history": history}


def test_unfinished_or_fresh_trials_train():
    assert already_finished(None, 3) is None
    assert already_finished(_state(2), 3) is None


def test_a_trial_checkpointed_at_its_last_epoch_reports_it_again():
    final = already_finished(_state(3), 3)
    assert final["val_accuracy"] == pytest.approx(0.3)
    assert final["epoch"] == 3
    assert [h["epoch"] for h in final["history"]] == [1, 2, 3]
    assert final == tune_metrics(_state(3)["history"][-1], _state(3), 3)
