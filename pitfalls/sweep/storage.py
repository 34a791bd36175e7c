"""Where a study lives: its working directory on the driver, and the storage Ray writes to.

Two kinds of storage: a local or shared (NFS) directory, or S3-compatible object storage
(`s3://bucket/prefix?endpoint_override=host:9000&scheme=http`, through pyarrow's S3 file
system). With object storage, Tune's experiment state and every trial checkpoint go to the
bucket, so any node (or a new driver on another machine) can restore the study; the study's own
files (study.yaml, state.json, history.jsonl, results.parquet and its row files, reports) are
written in a local working copy (`$PITFALLS_CACHE`, default `~/.cache/pitfalls/studies/...`) and
copied to the bucket after every change. Only what changed travels: the lines appended to
history.jsonl go up as an object of their own (`history.d/<offset>.jsonl`), a finished trial as its
row file (`results.d/`), so the bytes uploaded per epoch or trial do not grow with the study.

Local storage: Tune overwrites its experiment state (`experiment_state-*.json`, the searcher's
state) in place on every snapshot. A driver killed in the middle of that copy leaves a truncated
file, and `Tuner.restore` then silently *starts the experiment over* ("Failed to restore the run
state. Restarting experiment.") — every finished trial would run again under a new id. Ray is
therefore handed a local file system whose files appear only once complete (written under a
temporary name, fsynced, renamed); object storage writes are atomic already.
"""

from __future__ import annotations

import contextlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from pitfalls.fileio import AtomicFile, atomic_write
from pitfalls.results.store import RESULTS_FILE, ROWS_DIR


class AtomicLocalHandler(pafs.FileSystemHandler):
    """pyarrow's local file system, except that files are written atomically."""

    def __init__(self):
        self.fs = pafs.LocalFileSystem()

    def __eq__(self, other) -> bool:
        return isinstance(other, AtomicLocalHandler)

    def __ne__(self, other) -> bool:
        return not self == other

    def __reduce__(self):  # Ray ships the file system to its workers
        return AtomicLocalHandler, ()

    def get_type_name(self) -> str:
        return "pitfalls-atomic-local"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of the root directory")

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self.fs.open_input_stream(src) as f_in, self.open_output_stream(dest, None) as f_out:
            while chunk := f_in.read(1 << 22):
                f_out.write(chunk)

    def open_input_stream(self, path: str):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return pa.PythonFile(AtomicFile(path), mode="w")

    def open_append_stream(self, path: str, metadata):
        return self.fs.open_append_stream(path)


def atomic_local_fs() -> pafs.FileSystem:
    """The file system to give Ray for a study directory on a local or shared (NFS) disk."""
    return pafs.PyFileSystem(AtomicLocalHandler())


def is_disk(fs: pafs.FileSystem) -> bool:
    """Whether `fs` is a local or shared (NFS) disk: its paths are paths of this machine."""
    return isinstance(fs, pafs.LocalFileSystem) or (
        isinstance(fs, pafs.PyFileSystem) and isinstance(fs.handler, AtomicLocalHandler))


REMOTE_SCHEMES = ("s3",)
HISTORY_FILE = "history.jsonl"  # append-only: in a bucket as pieces, see `push_tail`
# The study's own files copied whole, in the order a resumed study needs them (history.jsonl
# and the row files are pulled on their own, the rows before results.parquet).
STUDY_FILES = ("study.yaml", "state.json", RESULTS_FILE, "comparison.md", "report.html")
PULL_THREADS = 16  # concurrent downloads of small objects (history pieces, row files)


def pieces_dir(name: str) -> str:
    """Where the pieces of an append-only study file lie in a bucket: `history.d/` for
    `history.jsonl`."""
    return f"{Path(name).stem}.d"


def _piece_name(name: str, offset: int) -> str:
    return f"{pieces_dir(name)}/{offset:012d}{Path(name).suffix}"


def _piece_offset(info: pafs.FileInfo) -> int | None:
    stem = info.base_name.split(".")[0]
    return int(stem) if stem.isdigit() and not info.base_name.startswith(".") else None


class StorageError(ValueError):
    """A storage location that cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class StudyStorage:
    """A study's working directory (`local`) and where Ray keeps its state (`fs`, `root`).

    For local storage `root` is `local`; for object storage `uri` is the study's location
    (without credentials) and the study files are mirrored from `local` to `root`.
    """

    local: Path
    fs: pafs.FileSystem
    root: str
    uri: str | None = None

    @property
    def remote(self) -> bool:
        return self.uri is not None

    @property
    def location(self) -> str:
        """What the user names to resume or report this study."""
        return self.uri or str(self.local)

    @property
    def train_root(self) -> str:
        """Ray Train's storage for multi-worker trials."""
        return f"{self.root}/train"

    def exists(self, name: str) -> bool:
        return self.fs.get_file_info(f"{self.root}/{name}").type == pafs.FileType.File

    def push(self, *names: str) -> None:
        """Copy study files (names relative to the study directory) from the working directory
        to object storage (no-op when local); absent files are skipped."""
        if not self.remote:
            return
        for name in names:
            path = self.local / name
            if path.is_file():
                self._put(name, path.read_bytes())

    def push_tail(self, name: str, start: int) -> int:
        """Upload what the append-only file `name` gained since byte `start` as one object of its
        own (`<stem>.d/<start>`); return the new end (`start` unchanged when local).

        An upload that fails leaves `start` where it was, so the next call sends those bytes too.
        """
        path = self.local / name
        if not self.remote or not path.is_file():
            return start
        with path.open("rb") as f:
            f.seek(start)
            data = f.read()
        if data:
            self._put(_piece_name(name, start), data)
        return start + len(data)

    def pushed_size(self, name: str) -> int:
        """How many bytes of the append-only file `name` the bucket holds (0 when local): where
        the next `push_tail` starts. Reads the listing only."""
        if not self.remote:
            return 0
        base = self.fs.get_file_info(f"{self.root}/{name}")
        end = base.size if base.type == pafs.FileType.File else 0
        return _contiguous(end, self._pieces(name))[1]

    def delete(self, *names: str) -> None:
        """Remove study files from object storage (no-op when local): row files a compaction
        absorbed. A file already gone is fine."""
        if not self.remote:
            return
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(f"{self.root}/{name}")

    def pull(self) -> None:
        """Bring the study files from object storage into the working directory.

        The bucket is authoritative, except when this machine's history extends the bucket's
        (begins with it and is longer): then this machine's driver was killed before its last
        upload, and the working copy is the newer one (its driver uploads the rest).
        """
        if not self.remote:
            return
        self.local.mkdir(parents=True, exist_ok=True)
        remote = {f.base_name: f for f in self.fs.get_file_info(pafs.FileSelector(self.root))
                  if f.type == pafs.FileType.File}
        history = self._pull_log(HISTORY_FILE, remote.get(HISTORY_FILE))
        mine = self.local / HISTORY_FILE
        if (mine.is_file() and history is not None and mine.stat().st_size > len(history)
                and mine.read_bytes().startswith(history)):
            return
        if history is not None:
            atomic_write(mine, history)
        self._mirror(ROWS_DIR)  # before results.parquet: a row file is never the older copy
        for name in STUDY_FILES:
            if name in remote:
                atomic_write(self.local / name, self._get(name))

    def _put(self, name: str, data: bytes) -> None:
        path = f"{self.root}/{name}"
        try:
            f = self.fs.open_output_stream(path)
        except FileNotFoundError:  # a file system with real directories (S3 has none)
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            f = self.fs.open_output_stream(path)
        with f:
            f.write(data)

    def _get(self, name: str) -> bytes:
        with self.fs.open_input_stream(f"{self.root}/{name}") as f:
            return f.read()

    def _list(self, directory: str) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(f"{self.root}/{directory}", allow_not_found=True)
        return [f for f in self.fs.get_file_info(selector) if f.type == pafs.FileType.File]

    def _pieces(self, name: str) -> list[tuple[int, pafs.FileInfo]]:
        found = ((_piece_offset(f), f) for f in self._list(pieces_dir(name)))
        return sorted(((o, f) for o, f in found if o is not None), key=lambda p: p[0])

    def _get_all(self, names: list[str]) -> list[bytes]:
        with ThreadPoolExecutor(PULL_THREADS) as pool:
            return list(pool.map(self._get, names))

    def _pull_log(self, name: str, base: pafs.FileInfo | None) -> bytes | None:
        """The append-only file `name` as the bucket holds it (a whole copy, if any, then the
        pieces that continue it), or None when the bucket has none of it."""
        pieces = self._pieces(name)
        if base is None and not pieces:
            return None
        parts = [self._get(name)] if base is not None else []
        end = len(parts[0]) if parts else 0
        used, _ = _contiguous(end, pieces)
        rel = f"{pieces_dir(name)}/"
        for (offset, _), chunk in zip(used, self._get_all([rel + f.base_name for _, f in used])):
            parts.append(chunk[end - offset:])
            end = offset + len(chunk)
        return b"".join(parts)

    def _mirror(self, directory: str) -> None:
        """Make the working copy's `directory` hold exactly the bucket's files of it."""
        names = [f"{directory}/{f.base_name}" for f in self._list(directory)]
        for name, data in zip(names, self._get_all(names)):
            (self.local / name).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.local / name, data)
        here = self.local / directory
        for path in here.iterdir() if here.is_dir() else ():
            if path.is_file() and f"{directory}/{path.name}" not in names:
                path.unlink()


def _contiguous(end: int, pieces: list[tuple[int, pafs.FileInfo]]
                ) -> tuple[list[tuple[int, pafs.FileInfo]], int]:
    """The pieces that continue a file of `end` bytes without a gap, and the file's new end.
    A piece the file already covers (left by a kill mid-upload of an earlier copy) is skipped."""
    used = []
    for offset, info in pieces:
        if offset > end:
            break
        if offset + info.size > end:
            used.append((offset, info))
            end = offset + info.size
    return used, end


def _cache_root() -> Path:
    return Path(os.environ.get("PITFALLS_CACHE") or Path.home() / ".cache" / "pitfalls")


def _split_remote(uri: str) -> tuple[str, str, str]:
    """(scheme, location without query, query) of a remote storage URI; refuses credentials."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.username or parts.password:
        raise StorageError(
            f"storage: {parts.scheme}://{parts.hostname}...: credentials in the URI would be "
            "pickled into the study's Ray state; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or an AWS profile) on every node instead")
    if not parts.netloc:
        raise StorageError(f"storage: {uri!r} names no bucket (s3://BUCKET/PREFIX)")
    return parts.scheme, f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/"), parts.query


def is_remote(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def _remote_fs(uri: str) -> tuple[pafs.FileSystem, str, str, str]:
    scheme, base, query = _split_remote(uri)
    if scheme not in REMOTE_SCHEMES:
        raise StorageError(f"storage: {uri!r}: scheme {scheme!r} is not supported; use a local "
                           f"or shared (NFS) directory, or one of {', '.join(REMOTE_SCHEMES)}://")
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as e:
        raise StorageError(f"storage: {uri!r}: {e}") from None
    return fs, path.rstrip("/"), base, query


def _with_query(base: str, query: str) -> str:
    return f"{base}?{query}" if query else base


def local_storage(study_dir: Path) -> StudyStorage:
    """A study in a local or shared (NFS) directory."""
    local = Path(study_dir).resolve()
    return StudyStorage(local, atomic_local_fs(), str(local))


_CURRENT: StudyStorage | None = None
_CURRENT_SPEC = None


def bind(storage: StudyStorage | None, spec=None) -> None:
    """Declare the storage of the study this driver process runs.

    Tune pickles its callbacks into the study's state and unpickles them on resume, possibly on
    another machine whose working directory differs: they look the storage up here instead.
    """
    global _CURRENT, _CURRENT_SPEC
    _CURRENT, _CURRENT_SPEC = storage, spec


def bound(default: StudyStorage) -> StudyStorage:
    return _CURRENT or default


def bound_spec(default):
    """The study this driver runs, as this code parses it (a pickled callback may hold the
    study as an older version of the code built it)."""
    return _CURRENT_SPEC or default


def study_storage(location: str, name: str) -> StudyStorage:
    """The storage of a new study called `name` under `location` (a directory or a URI)."""
    if not is_remote(location):
        return local_storage(Path(location.removeprefix("file://")) / name)
    fs, path, base, query = _remote_fs(location)
    return StudyStorage(_cache_root() / "studies" / base.replace("://", "/") / name, fs,
                        f"{path}/{name}", _with_query(f"{base}/{name}", query))


def existing_study_storage(location: str) -> StudyStorage:
    """The storage of an existing study: its directory, or its URI (`s3://bucket/prefix/NAME`).

    A working directory of a study on object storage leads back to its bucket through the
    `storage` its state.json records.
    """
    if is_remote(location):
        fs, path, base, query = _remote_fs(location)
        return StudyStorage(_cache_root() / "studies" / base.replace("://", "/"), fs, path,
                            _with_query(base, query))
    local = Path(location).resolve()
    state = local / "state.json"
    if state.is_file() and (uri := json.loads(state.read_text()).get("storage")):
        fs, path, _, _ = _remote_fs(uri)
        return StudyStorage(local, fs, path, uri)
    return local_storage(local)


def tune_state_problem(fs: pafs.FileSystem, tune_dir: str, trials_recorded: bool) -> str | None:
    """Why Tune could not restore the experiment in `tune_dir` (it would start over), or None.

    Tune restores from the newest `experiment_state-*.json` (JSON) and the searcher's newest
    state next to it (a pickle; the study directory is trusted, see docs/deployment.md). With
    no state at all, starting over is right unless trials already reported results.
    """
    import pickle

    files = {f.base_name for f in fs.get_file_info(pafs.FileSelector(tune_dir, allow_not_found=True))
             if f.type == pafs.FileType.File}
    if "tuner.pkl" not in files:
        return None  # killed before Tune started: the study starts from the beginning
    states = sorted(n for n in files if n.startswith("experiment_state-") and n.endswith(".json"))
    if not states:
        return (f"{tune_dir} holds no experiment state (experiment_state-*.json) although trials "
                "reported results") if trials_recorded else None

    def read(name: str) -> bytes:
        with fs.open_input_stream(f"{tune_dir}/{name}") as f:
            return f.read()

    try:
        json.loads(read(states[-1]))
    except (OSError, ValueError) as e:
        return f"{tune_dir}/{states[-1]} is unreadable ({e})"
    searcher = sorted(n for n in files if "-state-" in n)
    if searcher:
        try:
            pickle.loads(read(searcher[-1]))
        except Exception as e:  # noqa: BLE001 - any failure means Tune would start over
            return f"{tune_dir}/{searcher[-1]} is unreadable ({type(e).__name__}: {e})"
    return None


def has_experiment_state(fs: pafs.FileSystem, tune_dir: str) -> bool:
    """Whether Tune snapshotted the experiment at least once (`experiment_state-*.json`)."""
    infos = fs.get_file_info(pafs.FileSelector(tune_dir, allow_not_found=True))
    return any(i.base_name.startswith("experiment_state-") and i.base_name.endswith(".json")
               for i in infos if i.type == pafs.FileType.File)


def tune_trial_ids(fs: pafs.FileSystem, tune_dir: str) -> set[str]:
    """The trial ids Tune's newest experiment state holds (read as JSON, nothing unpickled)."""
    states = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(tune_dir, allow_not_found=True))
                    if i.type == pafs.FileType.File and i.base_name.startswith("experiment_state-")
                    and i.base_name.endswith(".json"))
    if not states:
        return set()
    with fs.open_input_stream(states[-1]) as f:
        data = json.loads(f.read())
    return {json.loads(entry[0])["trial_id"] for entry in data.get("trial_data", [])}


def count_unseen_finished_trials(fs: pafs.FileSystem, tune_dir: str, finished: set[str]) -> int:
    """Count, in the searcher's sample counter, trials that finished but that Tune's experiment
    state never saw; return how many.

    Tune snapshots its experiment state every 10 s or more. A trial created and finished
    between two snapshots (then the driver killed) is in the study's own records (its row, and
    an Optuna trial told COMPLETE) but not in Tune's state, and a restored Tune would sample a
    new trial in its place: one trial too many, trained on top of the study's budget. Bumping
    the search generator's counter (`search_gen_state-*.json`, a pickle despite its name) by
    those trials makes Tune sample exactly the trials still missing."""
    import ray.cloudpickle as cloudpickle

    unseen = finished - tune_trial_ids(fs, tune_dir)
    if not unseen:
        return 0
    files = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(tune_dir, allow_not_found=True))
                   if f.type == pafs.FileType.File and f.base_name.startswith("search_gen_state-"))
    if not files:
        return 0
    with fs.open_input_stream(files[-1]) as f:
        state = cloudpickle.loads(f.read())
    state["counter"] = min(state["counter"] + len(unseen), state["total_samples"])
    with fs.open_output_stream(files[-1]) as f:  # the atomic file system: whole or not at all
        f.write(cloudpickle.dumps(state))
    return len(unseen)


def release_finished_trials(fs: pafs.FileSystem, tune_dir: str, finished: set[str]) -> list[str]:
    """Drop trials that already finished from the grid searcher's live set; return them.

    Tune writes the searcher's state and the experiment state one after the other; a driver
    killed between the two leaves a searcher whose live set still holds trials the experiment
    records as finished. Tune never reports those trials complete again, so with
    `max_concurrent_trials` reached the searcher hands out no further trial and the resumed
    study waits forever (Ray's BasicVariantGenerator; seen in CI)."""
    import ray.cloudpickle as cloudpickle

    released: list[str] = []
    files = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(tune_dir, allow_not_found=True))
                   if f.type == pafs.FileType.File and f.base_name.startswith("basic-variant-state-"))
    for path in files:
        with fs.open_input_stream(path) as f:
            state = cloudpickle.loads(f.read())
        live = set(state.get("_live_trials", ()))
        stale = live & finished
        if stale:
            state["_live_trials"] = live - stale
            with fs.open_output_stream(path) as f:  # the atomic file system: whole or not at all
                f.write(cloudpickle.dumps(state))
            released += sorted(stale)
    return released
