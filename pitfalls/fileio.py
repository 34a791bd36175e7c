"""Files that appear whole or not at all.

A file is written to a temporary name in the same directory, flushed and fsynced, then renamed
over the target (`os.replace`, atomic on POSIX): a reader, or a process killed in the middle,
sees the old file or the new one, never half of one. Every file the platform must not leave
torn (results, study state, reports, a store's index, Tune's state, pending MLflow records)
goes through `AtomicFile`.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


class AtomicFile:
    """A binary file written under a temporary name; `close()` makes it appear at `path`,
    `abort()` drops it. (Also what pyarrow writes through: `pa.PythonFile(AtomicFile(p), "w")`.)"""

    def __init__(self, path: str | Path):
        self.path = str(path)
        directory, name = os.path.split(self.path)
        self.tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        self._f = open(self.tmp, "wb")  # noqa: SIM115 - closed by close() or abort()
        self.closed = False

    def write(self, data) -> int:
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def tell(self) -> int:
        return self._f.tell()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if self.closed:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.path)
        self.closed = True

    def abort(self) -> None:
        if not self.closed:
            self._f.close()
            Path(self.tmp).unlink(missing_ok=True)
            self.closed = True


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[AtomicFile]:
    """`AtomicFile(path)` that replaces `path` only when the block ends without an error."""
    f = AtomicFile(path)
    try:
        yield f
    except BaseException:
        f.abort()
        raise
    f.close()


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write `data` (text as UTF-8) to `path` atomically and durably."""
    with atomic_open(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)
