"""A trial's checkpoint: everything needed to continue its training exactly where it stopped.

A checkpoint is a plain dict (it is a torch file on disk, `pitfalls.sweep.checkpoints`) whose
keys are the constants below; the training loop writes and reads it (`capture`/`restore` in
`pitfalls.train.loop`), the sweep reads only its epoch and history (`epoch_of`, `history_of`).
"""

from __future__ import annotations

EPOCH = "epoch"  # the last epoch finished
HISTORY = "history"  # every epoch's metrics so far
MODEL = "model"
OPTIMIZER = "optimizer"
SCALER = "scaler"  # fp16 loss scaling
SAMPLER = "sampler"  # the training batches' sampler
EXTRA_SAMPLER = "extra_sampler"  # PreciseBN's and the probes' batches
TORCH_RNG = "torch_rng"
RANKS = "ranks"  # per DDP rank, in rank order:
AUG_RNG = "aug_rng"  # its augmentation generator
HEAD_STATE = "hidden"  # its carried head state (None unless the trial carries it)
SELECTION = "selection"  # the selected epoch, its validation value and weights (train.selection)


def epoch_of(checkpoint: dict) -> int:
    return int(checkpoint[EPOCH])


def history_of(checkpoint: dict) -> list[dict]:
    return list(checkpoint[HISTORY])
