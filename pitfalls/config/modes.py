"""The training-mode registry: how a trial's network is trained, declared once.

The seeds' central comparison is end-to-end training against its two baselines:
- `end_to_end`: CNN + temporal head trained together on sequences of `seq_len` consecutive
  frames (`videos_per_batch` sequences per step): BN sees correlated frames.
- `frame_only`: CNN + a linear classifier on single frames drawn across all training videos
  (`videos_per_batch x seq_len` frames per step, the same frames per step as the end-to-end arm):
  BN sees diverse batches, and no temporal model is trained.
- `two_stage`: stage 1 trains the CNN frame-wise as `frame_only` does (`budget.cnn_epochs` x
  `budget.cnn_steps_per_epoch`, the checkpoint chosen on validation); stage 2 extracts the frozen
  CNN's features of every frame once (eval mode), stores them in the study directory and trains
  the temporal head on whole-video feature sequences (`budget.epochs` x `budget.steps_per_epoch`,
  `videos_per_batch` whole videos per step).

The trial parameter `training` (pitfalls.config.params), validation, the training loop and the
planner read these entries. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    temporal_head: bool  # trains the study's temporal head (frame_only has none)
    frame_batches: bool  # (its first stage) trains on single frames drawn across videos
    stages: int = 1
    doc: str = ""


MODES: dict[str, Mode] = {m.name: m for m in [
    Mode("end_to_end", temporal_head=True, frame_batches=False,
         doc="CNN + temporal head trained together on consecutive frames"),
    Mode("frame_only", temporal_head=False, frame_batches=True,
         doc="CNN + linear classifier on single frames drawn across videos"),
    Mode("two_stage", temporal_head=True, frame_batches=True, stages=2,
         doc="CNN frame-wise, then the temporal head on the frozen CNN's stored features"),
]}
MODE_NAMES = tuple(MODES)
