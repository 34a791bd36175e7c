"""One driver at a time per study: two drivers would train the same trials into the same
checkpoints and MLflow runs, and the last to write `results.parquet` would win.

A study in a directory (local or NFS) is locked with `flock` on `driver.lock` in it: the kernel
drops the lock when the driver dies, however it dies, so a local lock is never stale. A study on
object storage has no locks, so its driver keeps a lease object (`driver.lock` in the bucket)
that it renews every `ttl_s / 3` seconds. A driver that finds a lease watches it for a little
longer than one renewal period: a lease that is not renewed meanwhile (or has expired) belongs
to a driver that is gone (SIGKILLed, its machine lost) and is taken over, so a resume right
after a kill waits seconds, not the lease's lifetime. Both record who holds them (host, pid, since when), so
the refusal can name the holder. `force=True` takes over a lock whose holder the user knows is
gone (a lease not yet expired; a lock on a shared disk held from a machine that died).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field

import pyarrow.fs as pafs

LOCK_FILE = "driver.lock"
LEASE_TTL_S = 15.0


class StudyLocked(RuntimeError):
    """Another driver holds the study; the message names it and says what to do."""


@dataclass(frozen=True)
class Holder:
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    since: float = field(default_factory=time.time)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    expires: float | None = None  # leases only

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"host {self.host}, pid {self.pid}, since {since}"

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        try:
            raw = json.loads(data)
            return cls(**{k: raw[k] for k in ("host", "pid", "since", "token", "expires") if k in raw})
        except (ValueError, TypeError, KeyError):
            return None


def _refusal(where: str, holder: Holder | None, how: str) -> StudyLocked:
    who = holder.describe() if holder else "a driver that did not say who it is"
    return StudyLocked(f"{where} is being run by another driver ({who}); wait for it to end, or "
                       f"stop it (Ctrl-C or SIGTERM) and run `pitfalls resume` again{how}")


class DirectoryLock:
    """`flock` on `<study dir>/driver.lock`, held until `release()`."""

    def __init__(self, directory: str, where: str):
        self.path, self.where = os.path.join(directory, LOCK_FILE), where
        self._fd: int | None = None

    def acquire(self, force: bool = False) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Holder.parse(os.pread(fd, 4096, 0))
            alive_here = holder is not None and holder.host == socket.gethostname() and _alive(holder.pid)
            if not force or alive_here or holder is None:
                os.close(fd)
                raise _refusal(self.where, holder, "" if alive_here else
                               "; if that machine is gone (a lock kept by a shared disk), "
                               "rerun with --force to take the lock over") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(Holder())).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LeaseLock:
    """A lease object in object storage, renewed by a daemon thread until `release()`."""

    def __init__(self, fs: pafs.FileSystem, root: str, where: str, ttl_s: float = LEASE_TTL_S):
        self.fs, self.path, self.where, self.ttl_s = fs, f"{root}/{LOCK_FILE}", where, ttl_s
        self.holder: Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> Holder | None:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return Holder.parse(f.read())
        except FileNotFoundError:
            return None
        except OSError as e:
            if self.fs.get_file_info(self.path).type == pafs.FileType.NotFound:
                return None
            raise StudyLocked(f"{self.where}: cannot read its driver lease {self.path}: {e}") from e

    def _renewed(self, current: Holder) -> bool:
        """Whether the holder of `current` is alive: its lease is renewed (or another driver
        takes it) within one renewal period and a bit, before it expires."""
        deadline = time.time() + self.ttl_s / 3 * 1.3
        while time.time() < min(deadline, current.expires or 0):
            time.sleep(min(1.0, self.ttl_s / 30))
            now = self._read()
            if now is None:
                return False  # released meanwhile
            if (now.token, now.expires) != (current.token, current.expires):
                return True
        return False

    def _write(self, holder: Holder) -> None:
        with contextlib.suppress(OSError):  # a directory-like store needs the folder first
            self.fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(self.path) as f:
            f.write(json.dumps(asdict(holder)).encode())

    def acquire(self, force: bool = False) -> None:
        current = self._read()
        if current is not None and not force and self._renewed(current):
            raise _refusal(self.where, self._read() or current,
                           "; if that driver is gone, rerun with --force to take the lease over")
        mine = Holder(expires=time.time() + self.ttl_s)
        self._write(mine)
        time.sleep(min(1.0, self.ttl_s / 10))  # a rival that wrote at the same moment: one wins
        if (now := self._read()) is None or now.token != mine.token:
            raise _refusal(self.where, now, "")
        self.holder = mine
        self._thread = threading.Thread(target=self._renew, name="pitfalls-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            with contextlib.suppress(OSError):  # a missed renewal leaves ttl_s - ttl_s/3 to retry
                self.holder = Holder(self.holder.host, self.holder.pid, self.holder.since,
                                     self.holder.token, time.time() + self.ttl_s)
                self._write(self.holder)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.holder is not None:
            with contextlib.suppress(OSError):
                current = self._read()
                if current is not None and current.token == self.holder.token:
                    self.fs.delete_file(self.path)
            self.holder = None


@contextlib.contextmanager
def study_lock(storage, force: bool = False):
    """Hold the study's driver lock for the block (see the module docstring); raises
    `StudyLocked` naming the holder when another driver has it."""
    lock = (LeaseLock(storage.fs, storage.root, storage.location) if storage.remote
            else DirectoryLock(str(storage.local), storage.location))
    lock.acquire(force)
    try:
        yield lock
    finally:
        lock.release()
