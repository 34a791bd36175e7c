import numpy as np

from pitfalls.data import SequenceSampler, SyntheticOptions, make_videos, video_lengths


def test_synthetic_is_deterministic_and_matches_declared_lengths():
    opts = SyntheticOptions(num_videos=5, val_videos=2, frame_size=16)
    train_a, val_a = make_videos(opts)
    train_b, _ = make_videos(opts)
    assert [len(v) for v in val_a + train_a] == video_lengths(opts)
    for a, b in zip(train_a, train_b):
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.phases, b.phases)
    other, _ = make_videos(SyntheticOptions(num_videos=5, val_videos=2, frame_size=16, seed=1))
    assert not np.array_equal(other[0].frames[:5], train_a[0].frames[:5])


def test_phases_run_in_fixed_order_and_tools_are_binary():
    opts = SyntheticOptions(num_videos=3, val_videos=1, frame_size=24, num_tools=3)
    videos = sum(make_videos(opts), [])
    for v in videos:
        assert v.frames.shape == (len(v), 24, 24, 3) and v.frames.dtype == np.uint8
        assert np.all(np.diff(v.phases) >= 0)  # fixed order, each phase once
        assert set(np.unique(v.phases)) == set(range(opts.num_phases))
        assert v.tools.shape == (len(v), 3) and set(np.unique(v.tools)) <= {0, 1}


def test_appearance_depends_on_phase():
    """Mean frame colour differs between phases far more than within one phase."""
    v = make_videos(SyntheticOptions(num_videos=2, val_videos=1, noise=0.0))[0][0]
    means = np.stack([v.frames[v.phases == p].reshape(-1, 3).mean(0) for p in range(5)])
    spread = np.abs(means[:, None] - means[None]).sum(-1)
    assert spread[np.triu_indices(5, 1)].min() > 1.0


def test_shared_look_renders_a_later_phase_like_an_earlier_one_and_changes_nothing_else():
    """With noise, camera shift and tools off a frame is grating x colour, so its channel
    proportions are its look's colour: phase 4 then matches phase 2 and no other phase."""
    base = {"num_videos": 3, "val_videos": 1, "noise": 0.0, "video_shift": 0.0, "num_tools": 0}
    plain = sum(make_videos(SyntheticOptions(**base)), [])
    shared = sum(make_videos(SyntheticOptions(**base, shared_looks=((4, 2),))), [])

    def hue(v, p):
        rgb = v.frames[v.phases == p].reshape(-1, 3).astype(float).sum(0)
        return rgb / rgb.sum()

    for a, b in zip(plain, shared):
        assert np.array_equal(a.phases, b.phases)
        assert np.array_equal(a.frames[a.phases != 3], b.frames[b.phases != 3])
        assert not np.array_equal(a.frames[a.phases == 3], b.frames[b.phases == 3])
        assert np.abs(hue(b, 3) - hue(b, 1)).max() < 0.01  # phase 4 (index 3) looks like 2
        assert min(np.abs(hue(b, 3) - hue(b, p)).max() for p in (0, 2, 4)) > 0.02


def test_sampler_draws_distinct_videos_and_in_bounds_sequences():
    lengths = [10, 12, 8, 30, 9]
    sampler = SequenceSampler(lengths, seq_len=8, videos_per_batch=3, rng=np.random.default_rng(0))
    for _ in range(200):
        batch = sampler.sample()
        videos = [v for v, _ in batch]
        assert len(set(videos)) == 3
        assert all(s >= 0 and s + 8 <= lengths[v] for v, s in batch)


def test_sampler_refuses_impossible_diversity():
    import pytest

    with pytest.raises(ValueError, match="only 2 videos"):
        SequenceSampler([10, 3, 12], seq_len=8, videos_per_batch=3, rng=np.random.default_rng(0))


def test_carried_sampler_walks_each_video_in_consecutive_chunks_on_distinct_lanes():
    from pitfalls.data.sampler import CarriedSampler

    lengths, seq_len = [10, 12, 25, 7, 30], 4
    sampler = CarriedSampler(lengths, seq_len, videos_per_batch=3, rng=np.random.default_rng(1))
    previous = None
    walks = 0
    for _ in range(300):
        picks, reset = sampler.sample()
        assert len({v for v, _ in picks}) == 3  # lanes hold distinct videos
        for lane, ((v, s), r) in enumerate(zip(picks, reset)):
            assert s >= 0 and s + seq_len <= lengths[v]
            if previous is not None and not r:  # same walk: the next chunk of the same video
                assert previous[lane] == (v, s - seq_len)
            if r:
                walks += 1
                assert s < seq_len  # a walk starts within the first chunk
        previous = picks
    assert walks > 20  # videos end and lanes move on, with a reset each time


def test_carried_sampler_covers_every_frame_and_resumes_from_its_state():
    from pitfalls.data.sampler import CarriedSampler

    lengths = [9, 11, 14]
    sampler = CarriedSampler(lengths, 4, 2, np.random.default_rng(0))
    seen = [np.zeros(n, bool) for n in lengths]
    for _ in range(200):
        for v, s in sampler.sample()[0]:
            seen[v][s:s + 4] = True
    assert all(s.all() for s in seen)  # random walk offsets reach the tails too

    state = sampler.state_dict()
    expected = [sampler.sample() for _ in range(10)]
    resumed = CarriedSampler(lengths, 4, 2, np.random.default_rng(99))
    resumed.load_state_dict(state)
    got = [resumed.sample() for _ in range(10)]
    assert [p for p, _ in got] == [p for p, _ in expected]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, expected))
