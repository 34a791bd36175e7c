"""The background host pipeline: the same batches in the same order as building each batch
when it is needed, the sampler never drawn past the epoch, errors surfacing in the caller, and
a trial trained with it bit-identical (and resumable) to one trained without."""

import copy

import numpy as np
import pytest
import torch

from pitfalls.config import TrialConfig, parse_study
from pitfalls.data.sampler import CarriedSampler, FrameSampler, SequenceSampler
from pitfalls.data.synthetic import SyntheticOptions, make_videos
from pitfalls.models.inputs import make_batch, sequence_arrays
from pitfalls.train import train
from pitfalls.train.prefetch import HostBatch, HostBuffers, Prefetcher, Synchronous, draws
from tests.helpers import tiny_params, tiny_study

CPU = torch.device("cpu")
VIDEOS, _ = make_videos(SyntheticOptions(num_videos=6, val_videos=1, test_videos=0, frame_size=16))


def _build(seq_len):
    def build(picks):
        frames, labels = sequence_arrays(VIDEOS, picks, seq_len)
        return HostBatch(frames, seq_len, labels)
    return build


def _samplers():
    lengths = [len(v) for v in VIDEOS]
    return {
        "sequence": (lambda: SequenceSampler(lengths, 4, 3, np.random.default_rng(1)), 4, False),
        "carried": (lambda: CarriedSampler(lengths, 4, 3, np.random.default_rng(1)), 4, True),
        "frames": (lambda: FrameSampler(lengths, 6, np.random.default_rng(1)), 1, False),
    }


@pytest.mark.parametrize("kind", ["sequence", "carried", "frames"])
@pytest.mark.parametrize("make_feed", [lambda b: Prefetcher(b, CPU, depth=2),
                                       lambda b: Synchronous(b, CPU)], ids=["thread", "sync"])
def test_same_batches_in_the_same_order_and_the_same_sampler_state(kind, make_feed):
    make_sampler, seq_len, carried = _samplers()[kind]
    reference, expected = make_sampler(), []
    for _ in range(7):
        draw = reference.sample()
        picks = draw[0] if carried else draw
        expected.append((draw, make_batch(VIDEOS, picks, seq_len, CPU)))
    sampler, got = make_sampler(), []
    with make_feed(_build(seq_len)) as feed:
        for draw, batch in feed.batches(draws(sampler.sample, 7, carried)):
            got.append((draw, batch))
    assert len(got) == 7
    for (want_draw, (wx, (wy,))), ((picks, reset), (x, (y,))) in zip(expected, got):
        if carried:
            assert picks == want_draw[0] and np.array_equal(reset, want_draw[1])
        else:
            assert picks == want_draw and reset is None
        assert torch.equal(x, wx) and x.dtype == wx.dtype and torch.equal(y, wy)
    # the batches handed out earlier are not overwritten by later ones (buffers are reused)
    assert torch.equal(got[0][1][0], expected[0][1][0])
    assert sampler.state_dict() == reference.state_dict()  # drawn exactly as often


def test_draws_are_pulled_at_most_depth_ahead_and_never_past_the_end():
    pulled = []

    def sample():
        pulled.append(len(pulled))
        return [(0, len(pulled) % 3)]

    with Prefetcher(_build(4), CPU, depth=2) as feed:
        for k, _ in enumerate(feed.batches(draws(sample, 5))):
            assert len(pulled) <= k + 1 + 2
    assert len(pulled) == 5


def test_an_error_while_building_reaches_the_caller():
    def build(picks):
        raise OSError(f"cannot read frames of {picks}")

    with pytest.raises(OSError, match="cannot read frames"), Prefetcher(build, CPU) as feed:
        for _ in feed.batches(draws(lambda: [(0, 0)], 3)):
            pass


def test_padded_lanes_and_buffer_rings():
    buffers = HostBuffers(CPU, size=2)
    a, b, c = (buffers.take((2, 3, 4, 4, 3)) for _ in range(3))
    assert a is not b and c is a  # a ring of 2: the third take reuses the first buffer
    slot = buffers.take((1, 5, 4, 4, 3))  # another shape: the same ring, a view of its storage
    assert slot is b and slot.host.shape == (1, 5, 4, 4, 3) and slot.host.is_contiguous()
    HostBatch([np.full((2, 4, 4, 3), 7, np.uint8)], 5).fill(slot.host.numpy())
    assert slot.host[0, :2].eq(7).all() and slot.host[0, 2:].eq(0).all()
    big = buffers.take((4, 5, 4, 4, 3))  # larger than any so far: its storage grows
    assert big is c and big.storage.numel() == 4 * 5 * 4 * 4 * 3


def _cfg(prefetch, carry_hidden):
    raw = tiny_study(budget={"epochs": 3, "steps_per_epoch": 3}, performance={"prefetch": prefetch})
    return TrialConfig(parse_study(raw), tiny_params(norm="batch", carry_hidden=carry_hidden))


@pytest.mark.parametrize("carry_hidden", [False, True])
def test_a_trial_with_prefetch_is_bit_identical_and_resumes_exactly(carry_hidden):
    straight = train(_cfg(False, carry_hidden))
    on, states = _cfg(True, carry_hidden), []
    with_thread = train(on, lambda m, s: states.append(copy.deepcopy(s)), snapshot=True)
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert with_thread[key] == straight[key], key
    resumed = train(on, resume=states[0])
    assert resumed["train_loss"] == straight["train_loss"]
    assert resumed["val_loss"] == straight["val_loss"]
