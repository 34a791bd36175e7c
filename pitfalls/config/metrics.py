"""The metric registry: every number a trial reports, declared once with its task, split and
the direction that is better.

Validation (which metric a study may optimize, its mode), the results schema (`final_`,
`best_`, `curve_` columns), `pitfalls report --metric` and the training code's metric names all
derive from `METRICS`. A metric is computed by its task (`pitfalls.train.tasks`) or by the loop;
tests check that what they compute and what is declared here agree.
"""

from __future__ import annotations

from dataclasses import dataclass

EVERY_EPOCH, AFTER_TRAINING = "epoch", "end"


@dataclass(frozen=True)
class Metric:
    name: str
    task: str | None  # the task that computes it; None: every task
    split: str  # "val" | "train": the videos it is measured on
    mode: str | None  # "max" | "min": which is better; None: reported, never compared
    when: str = EVERY_EPOCH  # or AFTER_TRAINING: measured once (a study cannot optimize it)
    doc: str = ""


def _cheat_gap(split: str) -> list[Metric]:
    where = "held-out" if split == "val" else "training"
    return [
        Metric(f"{split}_err_batchstats", None, split, "min", AFTER_TRAINING,
               f"error on {where} videos with each chunk's own batch statistics (evaluation.cheat_gap)"),
        Metric(f"{split}_err_runningstats", None, split, "min", AFTER_TRAINING,
               f"error on {where} videos with the running statistics, as deployed"),
        Metric(f"{split}_cheat_gap", None, split, "min", AFTER_TRAINING,
               "err_runningstats - err_batchstats: what batch statistics leaked"),
    ]


METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("val_accuracy", "phase", "val", "max", doc="frames right, per video; mean over videos"),
    Metric("val_precision", "phase", "val", "max", doc="per-video macro precision over its phases"),
    Metric("val_recall", "phase", "val", "max", doc="per-video macro recall"),
    Metric("val_f1", "phase", "val", "max", doc="per-video macro F1"),
    Metric("val_jaccard", "phase", "val", "max", doc="per-video macro Jaccard"),
    Metric("val_wMAE", "anticipation", "val", "min", doc="(inMAE + outMAE) / 2, minutes"),
    Metric("val_inMAE", "anticipation", "val", "min", doc="MAE where 0 < t < horizon"),
    Metric("val_outMAE", "anticipation", "val", "min", doc="MAE where t = horizon"),
    Metric("val_eMAE", "anticipation", "val", "min", doc="MAE where 0 < t < 0.1 horizon"),
    Metric("val_loss", None, "val", "min", doc="the task's loss per validation frame"),
    Metric("train_loss", None, "train", "min", doc="mean training loss of the epoch"),
    *_cheat_gap("val"), *_cheat_gap("train"),
    Metric("val_accuracy_std", "phase", "val", None, doc="sample std of accuracy over videos"),
]}

TASKS = ("phase", "anticipation")
# Metrics in the results table (a direction to compare by), in the schema's column order.
RESULT_METRICS = tuple(n for n, m in METRICS.items() if m.mode is not None)
LOWER_IS_BETTER = frozenset(n for n, m in METRICS.items() if m.mode == "min")
AFTER_TRAINING_METRICS = tuple(n for n, m in METRICS.items() if m.when == AFTER_TRAINING)
MODES = ("max", "min")


def task_metrics(task: str) -> dict[str, str]:
    """The metrics a study of `task` may optimize or compare by, with their better direction."""
    return {n: m.mode for n, m in METRICS.items()
            if m.task in (task, None) and m.mode is not None and m.when == EVERY_EPOCH}


def default_metric(task: str) -> str:
    """A study's metric when it names none: the task's first own metric."""
    return next(n for n, m in METRICS.items() if m.task == task and m.mode is not None)


def names(task: str, split: str = "val") -> tuple[str, ...]:
    """The task's own scores on `split`, without the split prefix (what its code computes)."""
    prefix = f"{split}_"
    return tuple(n[len(prefix):] for n, m in METRICS.items()
                 if m.task == task and m.split == split and m.mode is not None)
