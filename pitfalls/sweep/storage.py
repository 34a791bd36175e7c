"""Where a study lives: its working directory on the driver, and the storage Ray writes to.

Two kinds of storage: a local or shared (NFS) directory, or S3-compatible object storage
(`s3://bucket/prefix?endpoint_override=host:9000&scheme=http`, through pyarrow's S3 file
system). With object storage, Tune's experiment state and every trial checkpoint go to the
bucket, so any node (or a new driver on another machine) can restore the study; the study's own
files (study.yaml, state.json, history.jsonl, results.parquet, reports) are written in a local
working copy (`$PITFALLS_CACHE`, default `~/.cache/pitfalls/studies/...`) and copied to the
bucket after every change.

Local storage: Tune overwrites its experiment state (`experiment_state-*.json`, the searcher's
state) in place on every snapshot. A driver killed in the middle of that copy leaves a truncated
file, and `Tuner.restore` then silently *starts the experiment over* ("Failed to restore the run
state. Restarting experiment.") — every finished trial would run again under a new id. Ray is
therefore handed a local file system whose files appear only once complete (written under a
temporary name, fsynced, renamed); object storage writes are atomic already.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from pitfalls.fileio import AtomicFile, atomic_write


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


# The study's own files, in the order a resumed study needs them.
STUDY_FILES = ("study.yaml", "state.json", "history.jsonl", "results.parquet",
               "comparison.md", "report.html")
REMOTE_SCHEMES = ("s3",)


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
        """Copy study files from the working directory to object storage (no-op when local)."""
        if not self.remote:
            return
        for name in names:
            path = self.local / name
            if path.is_file():
                with self.fs.open_output_stream(f"{self.root}/{name}") as f:
                    f.write(path.read_bytes())

    def pull(self) -> None:
        """Bring the study files from object storage into the working directory.

        The bucket is authoritative, except when this machine's history is longer than the
        bucket's: then this machine's driver was killed before its last upload, and the working
        copy is the newer one.
        """
        if not self.remote:
            return
        self.local.mkdir(parents=True, exist_ok=True)
        remote = {f.base_name: f for f in self.fs.get_file_info(pafs.FileSelector(self.root))
                  if f.type == pafs.FileType.File}
        history = self.local / "history.jsonl"
        if (history.is_file() and "history.jsonl" in remote
                and history.stat().st_size > remote["history.jsonl"].size):
            return
        for name in STUDY_FILES:
            if name in remote:
                with self.fs.open_input_stream(f"{self.root}/{name}") as f:
                    atomic_write(self.local / name, f.read())


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
