"""One driver per study: a directory's `flock` and an object store's renewed lease refuse a
second driver with the holder's name, and give way when the holder is gone."""

from __future__ import annotations

import json
import os
import socket
import time

import pyarrow.fs as pafs
import pytest

from pitfalls.sweep.lock import LOCK_FILE, DirectoryLock, Holder, LeaseLock, StudyLocked


def test_a_second_driver_on_a_directory_is_refused_with_the_holder(tmp_path):
    first = DirectoryLock(str(tmp_path), "runs/study")
    first.acquire()
    holder = json.loads((tmp_path / LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(StudyLocked, match=rf"runs/study is being run by another driver \(host "
                                          rf"{socket.gethostname()}, pid {os.getpid()}, since "):
        DirectoryLock(str(tmp_path), "runs/study").acquire()
    with pytest.raises(StudyLocked):  # a live driver on this machine: not even with force
        DirectoryLock(str(tmp_path), "runs/study").acquire(force=True)
    first.release()
    second = DirectoryLock(str(tmp_path), "runs/study")
    second.acquire()  # the first is gone: free at once
    second.release()


def test_a_directory_lock_held_from_another_machine_is_taken_over_only_with_force(tmp_path):
    """(A lock kept by a shared disk for a machine that died: the holder cannot be checked.)"""
    holder = DirectoryLock(str(tmp_path), "study")
    holder.acquire()
    (tmp_path / LOCK_FILE).write_text(json.dumps({**Holder(host="gone-node", pid=1).__dict__}))
    with pytest.raises(StudyLocked, match="host gone-node, pid 1.*--force"):
        DirectoryLock(str(tmp_path), "study").acquire()
    taker = DirectoryLock(str(tmp_path), "study")
    taker.acquire(force=True)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    taker.release()
    holder.release()


@pytest.fixture
def bucket(tmp_path):
    """A file system standing in for object storage (the lease only reads and writes objects)."""
    return pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()), "bucket/study"


def test_a_renewed_lease_refuses_a_second_driver(bucket):
    fs, root = bucket
    first = LeaseLock(fs, root, "s3://bucket/study", ttl_s=3)
    first.acquire()
    t0 = time.monotonic()
    with pytest.raises(StudyLocked, match=f"pid {os.getpid()}.*--force"):
        LeaseLock(fs, root, "s3://bucket/study", ttl_s=3).acquire()
    assert time.monotonic() - t0 < 3  # one renewal period and a bit, not the lease's lifetime
    first.release()
    assert fs.get_file_info(f"{root}/{LOCK_FILE}").type == pafs.FileType.NotFound
    second = LeaseLock(fs, root, "s3://bucket/study", ttl_s=3)
    second.acquire()
    second.release()


def test_a_lease_nobody_renews_is_taken_over(bucket):
    """A SIGKILLed driver's lease: not expired yet, but no longer renewed."""
    fs, root = bucket
    fs.create_dir(root)
    dead = Holder(host="node-a", pid=4242, expires=time.time() + 3)
    with fs.open_output_stream(f"{root}/{LOCK_FILE}") as f:
        f.write(json.dumps(dead.__dict__).encode())
    lock = LeaseLock(fs, root, "s3://bucket/study", ttl_s=3)
    lock.acquire()
    assert lock.holder.pid == os.getpid() and lock.holder.token != dead.token
    lock.release()


def test_force_takes_a_live_lease_at_once(bucket):
    fs, root = bucket
    first = LeaseLock(fs, root, "s3://bucket/study", ttl_s=30)
    first.acquire()
    t0 = time.monotonic()
    taker = LeaseLock(fs, root, "s3://bucket/study", ttl_s=30)
    taker.acquire(force=True)
    assert time.monotonic() - t0 < 5
    first.release()  # the old holder, come back, does not delete the new holder's lease
    assert fs.get_file_info(f"{root}/{LOCK_FILE}").type == pafs.FileType.File
    taker.release()
