"""Each trial's checkpoints, kept by the platform in the study's storage, not by Tune.

Tune records a trial's latest checkpoint in its experiment state and deletes older ones as soon
as a new one registers (`num_to_keep`); the experiment state is uploaded later. A driver killed in
between leaves a state that names a checkpoint that no longer exists, and the resumed trial fails
("Could not recover from checkpoint as it does not exist on storage anymore") — seen with S3
storage, where the upload takes longest. Here a trial's checkpoints are files named by epoch in
`<study>/checkpoints/<trial id>/`, each written whole (atomic local writes, single S3 objects),
and a (re)started trial continues from the newest one there: nothing refers to a deleted file.

A checkpoint is loaded with `torch.load(weights_only=True)`: it holds only tensors, numbers,
strings, None and plain containers (`pitfalls.train.checkpoint`), and loading it builds nothing
else and runs no code, so whoever can write the study's storage cannot run code on the nodes
through it. A file that holds anything else is refused (`CheckpointError`, the trial fails); a
file that cannot be read at all (cut short, not a torch file, an I/O error) is passed over, with
a warning, for the one before it.
"""

from __future__ import annotations

import io
import logging
import pickle
import pickletools
import re
import zipfile
from dataclasses import dataclass

import pyarrow.fs as pafs

from pitfalls.train.checkpoint import EPOCH, epoch_of, plain

_NAME = re.compile(r"epoch-(\d{6})\.pt$")
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint file refused unread: it holds something other than what pitfalls writes."""


def _pickle_of(data: bytes) -> bytes:
    """The pickle inside a torch file: its `data.pkl` (zip format), else the file itself."""
    buf = io.BytesIO(data)
    if not zipfile.is_zipfile(buf):
        return data
    with zipfile.ZipFile(buf) as z:
        name = next(n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
        return z.read(name)


def _imports(data: bytes) -> list[str] | None:
    """The globals a torch file's pickle imports (read, never run), or None if it is no
    complete pickle (cut short, not a pickle at all)."""
    names: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(_pickle_of(data)):
            if isinstance(arg, str):
                strings.append(arg)
            if op.name in ("GLOBAL", "INST"):
                names.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                names.append(".".join(strings[-2:]))
    except Exception:  # noqa: BLE001 - any failure to parse means: not a complete pickle
        return None
    return names


def _odd_imports(imports: list[str] | None) -> str:
    """' (it imports X, Y)', naming the imports of a pickle other than torch's own (tensors,
    storages) and OrderedDict; '' if there are none."""
    odd = sorted({n for n in imports or () if not n.startswith(("torch.", "collections.OrderedDict"))})
    return f" (it imports {', '.join(odd)})" if odd else ""


def load_checkpoint(data: bytes, name: str) -> dict:
    """The state in the torch file `data` (read from `name`), loaded with weights_only.

    Raises CheckpointError for a file that holds anything but tensors, numbers, strings and
    plain containers (a complete pickle that names other globals: altered, or not written by
    pitfalls), or that is no pitfalls checkpoint; other exceptions for a file that cannot be
    read (cut short, not a torch file)."""
    import torch

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        imports = _imports(data)
        if imports is None:  # garbage or cut short: unreadable, not refused
            raise
        raise CheckpointError(
            f"refused checkpoint {name}: pitfalls checkpoints hold only tensors, numbers, strings and "
            "plain containers (dict, list, tuple), and this file holds other objects"
            f"{_odd_imports(imports)}: it was not written by pitfalls, "
            "or was altered since. It was not loaded (nothing in it ran); remove it, or the whole "
            "trial's checkpoints, if the trial should continue from an older one or start over"
        ) from None
    if not isinstance(state, dict) or EPOCH not in state:
        raise CheckpointError(f"refused checkpoint {name}: it holds a {type(state).__name__} without "
                              f"{EPOCH!r}, not a pitfalls checkpoint (not written by pitfalls, or "
                              "altered since); it was not used")
    return state


@dataclass(frozen=True)
class CheckpointStore:
    """A trial's checkpoints. Retention: `save` keeps the newest `keep` (the study's
    `fault_tolerance.keep_checkpoints`, default 1) and deletes an older one only once the new one
    is stored and reads back. `latest` falls back from an unreadable newest file to the one before
    it, so a trial that keeps 1 loses its progress to a damaged checkpoint (it starts over, with a
    warning), one that keeps 2 loses one epoch at most; each kept checkpoint costs its full size
    (~300 MB for resnet50 + AdamW)."""

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
        """Write the state of `state["epoch"]`, check that it reads back, then delete the older
        checkpoints beyond the newest `keep` and any newer ones (those `latest` passed over as
        unreadable).

        The state must load with weights_only: it goes through `pitfalls.train.checkpoint.plain`,
        which refuses anything else (a TypeError naming where). A stored file that does not read
        back (its size or zip directory differs from what was written) is an OSError, and no
        older checkpoint is deleted: the trial fails, and its retry falls back to them."""
        import torch

        epoch = epoch_of(state)
        path = self._path(epoch)
        buf = io.BytesIO()
        torch.save(plain(state), buf)  # (already plain from `capture`: a cheap walk, no copy)
        data = buf.getvalue()
        self.fs.create_dir(self.directory, recursive=True)
        with self.fs.open_output_stream(path) as f:
            f.write(data)
        self._check_stored(path, data)
        epochs = self.epochs()
        older = [e for e in epochs if e <= epoch]
        for old in older[:-self.keep] + [e for e in epochs if e > epoch]:
            self.fs.delete_file(self._path(old))

    def _check_stored(self, path: str, data: bytes) -> None:
        """The stored file has the size and the zip directory (names, sizes, CRCs) of `data`:
        a few small reads, not the whole file again."""
        def directory(z: zipfile.ZipFile) -> list[tuple]:
            return [(i.filename, i.file_size, i.CRC) for i in z.infolist()]

        try:
            with self.fs.open_input_file(path) as f:
                size = f.size()
                if size != len(data):
                    raise OSError(f"{size} bytes stored, {len(data)} written")
                with zipfile.ZipFile(f) as stored:
                    found = directory(stored)
        except (OSError, zipfile.BadZipFile) as e:
            raise OSError(f"checkpoint {path} does not read back ({e}); the older checkpoints "
                          "are kept") from e
        with zipfile.ZipFile(io.BytesIO(data)) as written:
            if found != directory(written):
                raise OSError(f"checkpoint {path} does not read back (its zip directory differs from "
                              "what was written); the older checkpoints are kept")

    def latest(self) -> dict | None:
        """The newest state that can be read (None for a trial that has not finished an epoch).

        A file that cannot be read (cut short, not a torch file, an I/O error) is logged as a
        warning and the one before it is tried, down to none: the trial then starts from scratch,
        with a warning. A file that holds other objects than a checkpoint's is refused
        (`CheckpointError`): the trial fails, nothing of the file is run."""
        epochs = self.epochs()
        for epoch in reversed(epochs):
            path = self._path(epoch)
            try:
                with self.fs.open_input_stream(path) as f:
                    data = f.read()
                return load_checkpoint(data, path)
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - whatever makes a file unreadable: try the one before
                log.warning("checkpoint %s cannot be read (%s: %s); %s", path, type(e).__name__, e,
                            "trying the one before it" if epoch != epochs[0] else "it was the oldest")
        if epochs:
            log.warning("no checkpoint in %s can be read: the trial starts from scratch "
                        "(fault_tolerance.keep_checkpoints: 2 keeps one to fall back to)", self.directory)
        return None
