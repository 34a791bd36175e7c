"""Study search space -> Tune param_space and searcher, linked factors included."""

from pitfalls.config import TrialParams, level_label, parse_study
from pitfalls.sweep.space import param_space, search_algorithm
from tests.helpers import tiny_study

SHAPES = [{"videos_per_batch": 1, "seq_len": 4}, {"videos_per_batch": 2, "seq_len": 2}]
LABELS = [level_label(s) for s in SHAPES]


def _spec(**overrides):
    raw = tiny_study(**overrides)
    factors = raw["search_space"]["factors"]
    del factors["seq_len"], factors["videos_per_batch"]
    factors["batch_shape"] = SHAPES
    return parse_study(raw)


def test_grid_searches_a_linked_factor_over_its_level_labels():
    space = param_space(_spec(seeds=[0, 1]))
    assert space["batch_shape"] == {"grid_search": LABELS}
    assert space["norm"] == {"grid_search": ["batch", "group"]} and space["frozen_stages"] == 1
    assert "seq_len" not in space and "videos_per_batch" not in space
    assert space["lr"] == 1e-3 and space["seed"] == {"grid_search": [0, 1]}


def test_grid_variants_expand_to_every_norm_and_batch_shape():
    from ray.tune.search.variant_generator import generate_variants

    spec = _spec()
    params = [TrialParams.from_dict(spec.search_space.expand(config))
              for _, config in generate_variants(param_space(spec))]
    assert sorted((p.norm, p.videos_per_batch, p.seq_len) for p in params) == [
        ("batch", 1, 4), ("batch", 2, 2), ("group", 1, 4), ("group", 2, 2)]


def test_optuna_suggests_linked_levels_as_plain_labels(tmp_path):
    """Optuna's categorical choices must be plain values: the labels, expanded by the trial."""
    spec = _spec(searcher={"type": "optuna", "sampler": "random", "num_samples": 8, "seed": 0})
    space = param_space(spec)
    assert set(space["batch_shape"].categories) == set(LABELS)
    searcher = search_algorithm(spec, tmp_path)
    assert searcher.set_search_properties(spec.metric.name, spec.metric.mode, space)
    seen = set()
    for i in range(8):
        config = {**space, **searcher.suggest(f"t{i}")}
        p = TrialParams.from_dict(spec.search_space.expand(config))
        assert (p.videos_per_batch, p.seq_len) in {(1, 4), (2, 2)}
        seen.add((p.norm, p.videos_per_batch))
        searcher.on_trial_complete(f"t{i}", {"val_accuracy": 0.5, "training_iteration": 1})
    assert len(seen) > 1 and (tmp_path / "optuna.db").is_file()


def test_run_names_and_progress_lines_show_the_linked_parameters():
    import io

    from pitfalls.sweep.callbacks import ConsoleProgress
    from pitfalls.sweep.trial import trial_run_name

    spec = _spec()
    varied = spec.search_space.varied_params
    assert varied == ["norm", "videos_per_batch", "seq_len"]
    config = {"norm": "batch", "frozen_stages": 1, "batch_shape": LABELS[1], "lr": 1e-3,
              "weight_decay": 1e-4, "seed": 0}
    params = TrialParams.from_dict(spec.search_space.expand(config))
    assert trial_run_name("t1", params, varied) == "t1 norm=batch videos_per_batch=2 seq_len=2 seed=0"

    class Trial:
        trial_id = "t1"

    Trial.config = config
    out = io.StringIO()
    ConsoleProgress(spec, out)._line(Trial, "RUNNING", "")
    assert "t1 norm=batch videos_per_batch=2 seq_len=2 seed=0 | RUNNING" in out.getvalue()
