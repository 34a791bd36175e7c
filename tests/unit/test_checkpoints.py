"""A trial's own checkpoints: whole files named by epoch, the newest found by listing."""

import pyarrow.fs as pafs
import torch

from pitfalls.sweep.checkpoints import CheckpointStore
from pitfalls.sweep.storage import atomic_local_fs


def _state(epoch):
    return {"epoch": epoch, "weights": torch.full((3,), float(epoch)), "history": [{"epoch": epoch}]}


def test_newest_is_restored_and_only_keep_remain(tmp_path):
    store = CheckpointStore(atomic_local_fs(), str(tmp_path / "checkpoints" / "t1"), keep=2)
    assert store.latest() is None  # a trial that has not finished an epoch
    for epoch in (1, 2, 3):
        store.save(_state(epoch))
    assert store.epochs() == [2, 3]
    assert torch.equal(store.latest()["weights"], torch.full((3,), 3.0))


def test_on_object_storage(s3_server):
    fs, path = pafs.FileSystem.from_uri(s3_server.uri("ckpt/t1"))
    store = CheckpointStore(fs, path, keep=1)
    for epoch in (1, 2):
        store.save(_state(epoch))
    assert store.epochs() == [2] and store.latest()["epoch"] == 2
