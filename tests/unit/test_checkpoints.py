"""A trial's own checkpoints: whole files named by epoch, the newest found by listing, loaded
with weights_only (a file holding other objects is refused unread), an unreadable newest one
passed over for the one before it."""

import io
import logging
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import torch

from pitfalls.config import TrialConfig, parse_study
from pitfalls.data.sampler import CarriedSampler, SequenceSampler
from pitfalls.sweep.checkpoints import CheckpointError, CheckpointStore
from pitfalls.sweep.storage import AtomicLocalHandler, atomic_local_fs
from pitfalls.train import train
from pitfalls.train.checkpoint import plain
from tests.helpers import tiny_params, tiny_study


def _state(epoch):
    return {"epoch": epoch, "weights": torch.full((3,), float(epoch)), "history": [{"epoch": epoch}]}


def _store(tmp_path, keep=1, fs=None):
    return CheckpointStore(fs or atomic_local_fs(), str(tmp_path / "checkpoints" / "t1"), keep=keep)


def test_newest_is_restored_and_only_keep_remain(tmp_path):
    store = _store(tmp_path, keep=2)
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


def _leaves(x, path="checkpoint"):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, f"{path}[{k!r}]")
    elif type(x) in (list, tuple):
        for i, v in enumerate(x):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, x


def test_a_real_checkpoint_loads_with_weights_only_and_resumes_bit_for_bit(tmp_path):
    """Every part `capture` writes (model, optimizer, scaler, both samplers' numpy states, torch
    RNGs, the carried head state, the selection's weights, the history) is a tensor, a Python
    number, a string or None; the stored file loads with weights_only, and a trial resumed from
    it ends exactly as the uninterrupted one."""
    study = parse_study(tiny_study(budget={"epochs": 2, "steps_per_epoch": 2}, augmentation={"hflip": 0.5},
                                   evaluation={"precise_bn_batches": 1}))
    cfg = TrialConfig(study, tiny_params(norm="batch", carry_hidden=True))
    store = _store(tmp_path)
    straight = []

    def keep_the_first(metrics, state):
        straight.append((metrics, state))
        if metrics["epoch"] == 1:
            store.save(state)  # the run goes on: resuming from here must end as it does

    train(cfg, report=keep_the_first, snapshot=True)
    [path] = (tmp_path / "checkpoints" / "t1").iterdir()
    on_disk = torch.load(path, map_location="cpu", weights_only=True)
    odd = [(where, type(v)) for where, v in _leaves(on_disk)
           if not (v is None or type(v) in (bool, int, float, str, torch.Tensor))]
    assert odd == []
    assert on_disk["ranks"][0]["hidden"] is not None and on_disk["selection"]["weights"] is not None
    assert "lanes" in on_disk["sampler"] and on_disk["scaler"] == {}

    resumed = []
    final = train(cfg, report=lambda m, s: resumed.append((m, s)), resume=store.latest(), snapshot=True)
    timing = {"train_frames_per_s", "epoch_s"}
    assert [m["epoch"] for m, _ in resumed] == [2]
    assert {k: v for k, v in final.items() if k not in timing} == {
        k: v for k, v in straight[-1][0].items() if k not in timing}
    want = straight[-1][1]
    got = resumed[-1][1]
    assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])
    assert torch.equal(got["torch_rng"], want["torch_rng"]) and got["sampler"] == want["sampler"]


def _draw(sampler):
    out = sampler.sample()
    return (out[0], out[1].tolist()) if isinstance(out, tuple) else out


@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.MT19937, np.random.Philox, np.random.SFC64])
def test_sampler_states_are_plain_and_continue_the_stream(bit_generator):
    lengths = [9, 12, 10, 15]
    for cls in (SequenceSampler, CarriedSampler):
        a = cls(lengths, 4, 2, rng=np.random.Generator(bit_generator(3)))
        a.sample()
        state = a.state_dict()
        assert all(v is None or type(v) in (int, float, str) for _, v in _leaves(state))
        b = cls(lengths, 4, 2, rng=np.random.Generator(bit_generator(99)))
        b.load_state_dict(torch.load(_torch_file(state), weights_only=True))
        assert [_draw(b) for _ in range(3)] == [_draw(a) for _ in range(3)]


def test_plain_converts_numpy_and_names_what_cannot_be_in_a_checkpoint():
    out = plain({"a": np.float64(0.5), "b": [np.int64(3), np.arange(2)], "c": (torch.ones(1), None)})
    assert type(out["a"]) is float and type(out["b"][0]) is int and torch.equal(out["b"][1], torch.arange(2))
    with pytest.raises(TypeError, match=r"checkpoint\['x'\]\[1\]: a builtins.set cannot be in a checkpoint"):
        plain({"x": [1, {2}]})


def _torch_file(obj) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


class _Payload:
    """Unpickled, it would create `marker` (through a shell, or by opening it for writing)."""

    def __init__(self, marker, shell):
        self.marker, self.shell = str(marker), shell

    def __reduce__(self):
        if self.shell:
            return os.system, (f"touch {self.marker}",)
        return open, (self.marker, "w")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")  # the raw pickles'
@pytest.mark.parametrize("shell", [True, False])
@pytest.mark.parametrize("container", ["pickle", "torch"])
def test_a_checkpoint_holding_other_objects_is_refused_and_never_runs(tmp_path, container, shell):
    store = _store(tmp_path, keep=2)
    store.save(_state(1))
    marker = tmp_path / "pwned"
    payload = _Payload(marker, shell)
    data = (pickle.dumps(payload) if container == "pickle"
            else _torch_file({**_state(2), "history": [payload]}).getvalue())
    newest = tmp_path / "checkpoints" / "t1" / "epoch-000002.pt"
    newest.write_bytes(data)
    with pytest.raises(CheckpointError) as e:
        store.latest()  # not passed over for epoch 1: the trial fails
    assert isinstance(e.value, ValueError)
    message = str(e.value)
    assert str(newest) in message
    assert "hold only tensors, numbers, strings and plain containers" in message
    assert "not written by pitfalls, or was altered" in message and "It was not loaded" in message
    assert (f"{os.system.__module__}.system" if shell else f"{open.__module__}.open") in message
    assert not marker.exists()


class _FailingReads(AtomicLocalHandler):
    """The local file system, except that reading `broken` fails."""

    def __init__(self, broken: str):
        super().__init__()
        self.broken = broken

    def open_input_stream(self, path):
        if path.endswith(self.broken):
            raise OSError(f"{path}: Input/output error")
        return super().open_input_stream(path)


@pytest.mark.parametrize("damage", ["truncated", "not a torch file", "I/O error"])
def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog, damage):
    fs = pafs.PyFileSystem(_FailingReads("epoch-000003.pt")) if damage == "I/O error" else None
    store = _store(tmp_path, keep=2, fs=fs)
    for epoch in (1, 2, 3):
        store.save(_state(epoch))  # keeps 2 and 3
    newest = tmp_path / "checkpoints" / "t1" / "epoch-000003.pt"
    if damage == "truncated":
        newest.write_bytes(newest.read_bytes()[:-100])
    elif damage == "not a torch file":
        newest.write_bytes(b"<html>503 Service Unavailable</html>")
    with caplog.at_level(logging.WARNING, logger="pitfalls.sweep.checkpoints"):
        state = store.latest()
    assert state["epoch"] == 2
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert str(newest) in warning.getMessage() and "trying the one before it" in warning.getMessage()
    if damage == "I/O error":
        assert "Input/output error" in warning.getMessage()
    else:
        store.save(_state(3))  # the resumed trial writes its epoch 3 again
        assert store.epochs() == [2, 3] and store.latest()["epoch"] == 3


def test_a_stale_newer_checkpoint_is_removed_when_its_epoch_is_redone(tmp_path):
    store = _store(tmp_path, keep=1)
    store.save(_state(1))
    directory = tmp_path / "checkpoints" / "t1"
    (directory / "epoch-000003.pt").write_bytes(b"cut")  # unreadable: latest() passes it over
    assert store.latest()["epoch"] == 1
    store.save(_state(2))
    assert store.epochs() == [2]


def test_every_checkpoint_unreadable_starts_from_scratch_with_a_warning(tmp_path, caplog):
    store = _store(tmp_path, keep=2)
    store.save(_state(1))
    store.save(_state(2))
    for f in (tmp_path / "checkpoints" / "t1").iterdir():
        f.write_bytes(f.read_bytes()[:50])
    with caplog.at_level(logging.WARNING, logger="pitfalls.sweep.checkpoints"):
        assert store.latest() is None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and "epoch-000002.pt" in messages[0] and "epoch-000001.pt" in messages[1]
    assert "starts from scratch" in messages[2]


class _TruncatingWrites(AtomicLocalHandler):
    """The local file system, except that a file written stores only its first half."""

    def open_output_stream(self, path, metadata):
        handler = self

        class Half(io.BytesIO):
            def close(self):
                if not self.closed:
                    data = self.getvalue()
                    with handler.fs.open_output_stream(path) as f:
                        f.write(data[:len(data) // 2])
                super().close()

        return pa.PythonFile(Half(), mode="w")


def test_with_keep_1_the_previous_checkpoint_stays_until_the_new_one_reads_back(tmp_path, caplog):
    _store(tmp_path).save(_state(1))
    store = _store(tmp_path, keep=1, fs=pafs.PyFileSystem(_TruncatingWrites()))
    with pytest.raises(OSError, match=r"epoch-000002.pt does not read back .*older checkpoints are kept"):
        store.save(_state(2))
    assert store.epochs() == [1, 2]
    with caplog.at_level(logging.WARNING, logger="pitfalls.sweep.checkpoints"):
        assert store.latest()["epoch"] == 1  # the retried trial continues from epoch 1
    assert "epoch-000002.pt cannot be read" in caplog.records[0].getMessage()


def test_a_state_that_would_not_load_back_is_not_written(tmp_path):
    store = _store(tmp_path)
    store.save(_state(1))
    with pytest.raises(TypeError, match=r"checkpoint\['x'\]: a builtins.set cannot be in a checkpoint"):
        store.save({**_state(2), "x": {1, 2}})
    assert store.epochs() == [1]
