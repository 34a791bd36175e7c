"""A trial's checkpoint: everything needed to continue its training exactly where it stopped.

A checkpoint is a plain dict (it is a torch file on disk, `pitfalls.sweep.checkpoints`) whose
keys are the constants below; the training loop writes and reads it (`capture`/`restore` in
`pitfalls.train.loop`), the sweep reads only its epoch and history (`epoch_of`, `history_of`).

It holds nothing but tensors, Python numbers, strings, None and dicts, lists and tuples of those
(`plain`), so it loads with `torch.load(weights_only=True)`, which builds no other object and
runs no code from the file. What is not plain at run time is captured in a plain form and
rebuilt on restore:

- `STAGE`: 1, or 2 in a two-stage trial's second stage (`pitfalls.train.two_stage`), whose
  `MODEL` is the frozen CNN with the temporal head and whose other parts are the head's;
- `MODEL`, `SELECTION`'s weights: state dicts (OrderedDicts of tensors);
- `OPTIMIZER`: torch's optimizer state dict (per-parameter tensors, param groups of numbers);
- `SCALER`: GradScaler's state dict (empty unless fp16: its scale and counters as numbers);
- `SAMPLER`, `EXTRA_SAMPLER`: the numpy Generator's bit-generator state with its arrays as
  lists (`pitfalls.data.sampler`), and a carried sampler's lanes and queue as lists of ints;
- `TORCH_RNG`, each rank's `AUG_RNG`: torch generator states (uint8 tensors);
- each rank's `HEAD_STATE`: None, or the head's carried state (a tuple of CPU tensors);
- `SELECTION`: the selected epoch (int), its validation value (float) and weights (or None);
- `HISTORY`: the metrics of every epoch (dicts of numbers and strings).
"""

from __future__ import annotations

from collections import OrderedDict

EPOCH = "epoch"  # the last epoch finished
STAGE = "stage"  # 1, or 2 in a two-stage trial's second stage (absent before: 1)
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

_SCALARS = (bool, int, float, str)


def epoch_of(checkpoint: dict) -> int:
    return int(checkpoint[EPOCH])


def stage_of(checkpoint: dict) -> int:
    return int(checkpoint.get(STAGE, 1))


def history_of(checkpoint: dict) -> list[dict]:
    return list(checkpoint[HISTORY])


def plain(value, where: str = "checkpoint"):
    """`value` as a checkpoint holds it: tensors, None, bool, int, float, str, and dicts (keys
    numbers or strings), lists and tuples of those. numpy scalars become Python numbers and
    numpy arrays tensors; anything else (another class, a tensor subclass, a namedtuple) is a
    TypeError that names where it is, e.g. `checkpoint['ranks'][0]['hidden']`: a checkpoint
    loads with `torch.load(weights_only=True)`, which would refuse it."""
    import numpy as np
    import torch

    if value is None or type(value) in _SCALARS:
        return value
    if isinstance(value, np.generic):  # before the scalars: np.float64 is a float subclass
        return plain(value.item(), where)
    if isinstance(value, torch.Tensor):
        if type(value) not in (torch.Tensor, torch.nn.Parameter):
            raise TypeError(f"{where}: a {type(value).__name__} (a tensor subclass) cannot be in a checkpoint")
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError(f"{where}: a numpy array of Python objects cannot be in a checkpoint")
        return torch.from_numpy(np.array(value, copy=True))
    if isinstance(value, dict):
        for key in value:
            if not (key is None or type(key) in _SCALARS):
                raise TypeError(f"{where}: a key of type {type(key).__name__} cannot be in a checkpoint")
        items = [(k, plain(v, f"{where}[{k!r}]")) for k, v in value.items()]
        if not isinstance(value, OrderedDict):
            return dict(items)
        out = OrderedDict(items)  # a state dict: its per-module versions go with it
        if (meta := getattr(value, "_metadata", None)) is not None:
            out._metadata = plain(meta, f"{where}._metadata")
        return out
    if type(value) in (list, tuple):
        return type(value)(plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"{where}: a {type(value).__module__}.{type(value).__qualname__} cannot be in a "
                    "checkpoint (tensors, numbers, strings, None, dicts, lists and tuples only)")
