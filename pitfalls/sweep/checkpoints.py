"""Each trial's checkpoints, kept by the platform in the study's storage, not by Tune.

Tune records a trial's latest checkpoint in its experiment state and deletes older ones as soon
as a new one registers (`num_to_keep`); the experiment state is uploaded later. A driver killed in
between leaves a state that names a checkpoint that no longer exists, and the resumed trial fails
("Could not recover from checkpoint as it does not exist on storage anymore") — seen with S3
storage, where the upload takes longest. Here a trial's checkpoints are files named by epoch in
`<study>/checkpoints/<trial id>/`, each written whole (atomic local writes, single S3 objects),
and a (re)started trial continues from the newest one there: nothing refers to a deleted file.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import pyarrow.fs as pafs

from pitfalls.train.checkpoint import epoch_of

_NAME = re.compile(r"epoch-(\d{6})\.pt$")


@dataclass(frozen=True)
class CheckpointStore:
    fs: pafs.FileSystem
    directory: str  # <study root>/checkpoints/<trial id>
    keep: int = 1

    def epochs(self) -> list[int]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.directory, allow_not_found=True))
        return sorted(int(m.group(1)) for i in infos
                      if i.type == pafs.FileType.File and (m := _NAME.search(i.base_name)))

    def _path(self, epoch: int) -> str:
        return f"{self.directory}/epoch-{epoch:06d}.pt"

    def save(self, state: dict) -> None:
        """Write the state of `state["epoch"]`, then drop all but the newest `keep`."""
        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        self.fs.create_dir(self.directory, recursive=True)
        with self.fs.open_output_stream(self._path(epoch_of(state))) as f:
            f.write(buf.getvalue())
        for epoch in self.epochs()[:-self.keep]:
            self.fs.delete_file(self._path(epoch))

    def latest(self) -> dict | None:
        """The newest state (None for a trial that has not finished an epoch). The files were
        written by this study's trials: loading unpickles them, so the storage must be trusted."""
        import torch

        epochs = self.epochs()
        if not epochs:
            return None
        with self.fs.open_input_stream(self._path(epochs[-1])) as f:
            data = f.read()
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
