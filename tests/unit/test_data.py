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


def test_sampler_draws_distinct_videos_and_in_bounds_sequences():
    lengths = [10, 12, 8, 30, 9]
    sampler = SequenceSampler(lengths, seq_len=8, videos_per_batch=3, rng=np.random.default_rng(0))
    for _ in range(200):
        batch = sampler.sample()
        videos = [v for v, _ in batch]
        assert len(set(videos)) == 3
        assert all(0 <= s and s + 8 <= lengths[v] for v, s in batch)


def test_sampler_refuses_impossible_diversity():
    import pytest

    with pytest.raises(ValueError, match="only 2 videos"):
        SequenceSampler([10, 3, 12], seq_len=8, videos_per_batch=3, rng=np.random.default_rng(0))
