"""The metric registry: every number a trial reports, declared once with its task, split and
the direction that is better.

Validation (which metric a study may optimize, its mode), the results schema (`final_`,
`best_`, `curve_` columns), `pitfalls report --metric` and the training code's metric names all
derive from `METRICS`. A metric is computed by its task (`pitfalls.train.tasks`) or by the loop;
tests check that what they compute and what is declared here agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from pitfalls.scoring.protocols import METRICS as PROTOCOL_METRICS

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


# A task's scores, without a split prefix: each is measured on validation every epoch (`val_`)
# and once on the test split at the selected checkpoint (`test_`, when the dataset has one).
_TASK_SCORES: list[tuple[str, str | None, str | None, str]] = [
    ("accuracy", "phase", "max", "frames right, per video; mean over videos (fraction)"),
    ("precision", "phase", "max", "per-video macro precision over its phases"),
    ("recall", "phase", "max", "per-video macro recall"),
    ("f1", "phase", "max", "per-video macro F1"),
    ("jaccard", "phase", "max", "per-video macro Jaccard"),
    *((d.name, "phase", d.mode, d.doc) for d in PROTOCOL_METRICS),
    ("wMAE", "anticipation", "min", "(inMAE + outMAE) / 2, minutes"),
    ("inMAE", "anticipation", "min", "MAE where 0 < t < horizon"),
    ("outMAE", "anticipation", "min", "MAE where t = horizon"),
    ("eMAE", "anticipation", "min", "MAE where 0 < t < 0.1 horizon"),
    ("loss", None, "min", "the task's loss per frame"),
    ("accuracy_std", "phase", None, "sample std of accuracy over videos"),
]


def _split_scores(split: str) -> list[Metric]:
    when = EVERY_EPOCH if split == "val" else AFTER_TRAINING
    where = "validation, every epoch" if split == "val" else "test, once, at the selected checkpoint"
    return [Metric(f"{split}_{n}", task, split, mode, when, f"{doc} ({where})")
            for n, task, mode, doc in _TASK_SCORES]


METRICS: dict[str, Metric] = {m.name: m for m in [
    *_split_scores("val"),
    Metric("train_loss", None, "train", "min", doc="mean training loss of the epoch"),
    *_cheat_gap("val"), *_cheat_gap("train"),
    *_split_scores("test"),
    Metric("selected_epoch", None, "val", None, AFTER_TRAINING,
           "the epoch whose weights were evaluated on test (evaluation.select)"),
]}

TASKS = ("phase", "anticipation")
# Metrics with a curve in the results table (a direction to compare by), in column order.
RESULT_METRICS = tuple(n for n, m in METRICS.items() if m.mode is not None and m.split != "test")
# Measured once on the test split (and the selected epoch): one results column each.
TEST_METRICS = tuple(n for n, m in METRICS.items() if m.split == "test" or n == "selected_epoch")
# What a study may name as its metric: a curve metric, or a test metric with a direction.
STUDY_METRICS = RESULT_METRICS + tuple(n for n in TEST_METRICS if METRICS[n].mode is not None)
LOWER_IS_BETTER = frozenset(n for n, m in METRICS.items() if m.mode == "min")
AFTER_TRAINING_METRICS = tuple(n for n, m in METRICS.items() if m.when == AFTER_TRAINING)
MODES = ("max", "min")


def task_metrics(task: str) -> dict[str, str]:
    """The metrics a study of `task` may name, with their better direction: validation metrics
    (Tune optimizes them) and their test counterparts (Tune then optimizes the validation one,
    the report compares by the test one: the test split chooses nothing)."""
    return {n: m.mode for n, m in METRICS.items() if m.task in (task, None) and m.mode is not None
            and (m.when == EVERY_EPOCH or m.split == "test")}


def selection_metric(name: str) -> str:
    """The metric that selects checkpoints and hyperparameters for a study whose metric is `name`:
    its validation counterpart (`test_x` -> `val_x`)."""
    return "val_" + name[len("test_"):] if name.startswith("test_") else name


def default_metric(task: str) -> str:
    """A study's metric when it names none: the task's first own metric."""
    return next(n for n, m in METRICS.items() if m.task == task and m.mode is not None)


def names(task: str, split: str = "val") -> tuple[str, ...]:
    """The task's own scores on `split`, without the split prefix (what its code computes)."""
    prefix = f"{split}_"
    return tuple(n[len(prefix):] for n, m in METRICS.items()
                 if m.task == task and m.split == split and m.mode is not None)
