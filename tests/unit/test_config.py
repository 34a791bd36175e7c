
import pytest
import yaml

from pitfalls.config import StudyError, TrialParams, load_search_space, load_study, parse_study
from tests.conftest import ROOT
from tests.helpers import tiny_study

STUDIES = sorted((ROOT / "studies").glob("*.yaml"))
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))


def test_shipped_files_exist():
    assert STUDIES and SPACES


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_shipped_study_validates(path):
    spec = load_study(path)
    assert spec.num_trials >= 1


CPU_STUDIES = sorted((ROOT / "studies" / "cpu").glob("*.yaml"))
PAPER_STUDIES = sorted((ROOT / "studies" / "paper").glob("*.yaml"))
REPRO_STUDIES = sorted((ROOT / "studies" / "repro").glob("*.yaml"))


@pytest.mark.parametrize("path", REPRO_STUDIES, ids=lambda p: p.name)
def test_every_reproduction_study_validates_with_five_seeds(path):
    """Without the stand-in weights `pitfalls reproduce` makes for the pretrained one."""
    spec = load_study(path, check_weights=False)
    assert spec.dataset.name == "synthetic" and len(spec.seeds) >= 5
    if spec.model.pretrained:
        assert "pretrain-standin" in path.read_text()


def test_cheat_gap_metrics_are_results_not_study_metrics():
    with pytest.raises(StudyError, match="metric.name: 'train_cheat_gap' is measured once, after the "
                                         "last epoch"):
        parse_study(tiny_study(metric={"name": "train_cheat_gap", "mode": "min"},
                               evaluation={"cheat_gap": True}))
    assert parse_study(tiny_study(evaluation={"cheat_gap": True})).evaluation.cheat_gap
    with pytest.raises(StudyError, match="evaluation.cheat_gap: 'yes' must be true or false"):
        parse_study(tiny_study(evaluation={"cheat_gap": "yes"}))


@pytest.mark.parametrize("path", CPU_STUDIES, ids=lambda p: p.name)
def test_every_cpu_scale_paper_study_validates(path):
    """A study with `pretrained: true` needs stand-in weights in a Hugging Face cache
    (`pitfalls pretrain-standin`, as its header says): validated here without them."""
    spec = load_study(path, check_weights=False)
    assert spec.dataset.name == "synthetic"
    if spec.model.pretrained:
        assert "pretrain-standin" in path.read_text()


@pytest.mark.parametrize("path", PAPER_STUDIES, ids=lambda p: p.name)
def test_every_cholec80_paper_study_validates_without_its_data(path):
    """Nor its pretrained weights: this machine has neither (test_pretrained.py checks that the
    weights check refuses them here)."""
    spec = load_study(path, check_data=False, check_weights=False)
    assert spec.dataset.name == "cholec80" and spec.resources.gpus_per_worker == 1
    assert spec.dataset.options.frame_size == (384, 216)
    assert spec.model.head_options("lstm").hidden_size == 512


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_every_shipped_search_space_validates(path):
    space = load_search_space(path)
    assert {"norm", "frozen_stages", "seq_len", "videos_per_batch"} <= set(space.factor_dict)


def test_quickstart_is_a_full_grid_of_at_least_eight_trials():
    spec = load_study(ROOT / "studies" / "quickstart.yaml")
    assert spec.searcher.type == "grid"
    assert spec.num_trials >= 8


def test_all_problems_reported_at_once_with_field_value_and_choices():
    raw = tiny_study()
    raw["search_space"]["factors"].update(
        {"norm": ["batch", "bogus"], "frozen_stages": [9], "seq_len": [500]})
    with pytest.raises(StudyError) as info:
        parse_study(raw)
    problems = info.value.problems
    text = str(info.value)
    assert len(problems) == 3, text
    assert "factors.norm[1]: 'bogus'" in text and "valid choices: batch, batch_eval" in text
    assert "frozen_stages[0]: 9" in text and "valid: 0..4" in text
    assert "seq_len[0]: 500" in text and "shortest training video" in text


def test_structural_errors_are_collected_too():
    raw = tiny_study(task="segmentation", seeds=[], metric={"name": "acc", "mode": "up"},
                     searcher={"type": "bayes"}, budget={"epochs": 0})
    raw["dataset"]["name"] = "kinetics"
    with pytest.raises(StudyError) as info:
        parse_study(raw)
    text = str(info.value)
    for needle in ("task: 'segmentation'", "seeds: []", "metric.name: 'acc'", "metric.mode: 'up'",
                   "searcher.type: 'bayes'", "budget.epochs: 0", "dataset.name: 'kinetics'"):
        assert needle in text, text


def test_unknown_backbone_and_unsupported_family():
    with pytest.raises(StudyError, match="is not a timm model name"):
        parse_study(tiny_study(model={"backbone": "resnet_does_not_exist"}))
    with pytest.raises(StudyError, match="is a VisionTransformer; supported families: ResNet"):
        parse_study(tiny_study(model={"backbone": "test_vit"}))


def test_unsupported_family_norm_pair_and_cpu_sync_batch_are_refused():
    raw = tiny_study(model={"backbone": "test_nfnet"}, resources={"workers": 2})
    raw["search_space"]["factors"]["norm"] = ["batch", "none", "sync_batch"]
    with pytest.raises(StudyError) as info:
        parse_study(raw)
    text = str(info.value)
    assert "norm[0]: 'batch' is not supported for NormFreeNet backbones (test_nfnet); supported: none" in text
    assert "norm[2]: 'sync_batch' synchronizes BN across DDP workers on GPUs only" in text
    assert "norm[1]" not in text


def test_optuna_with_several_seeds_is_refused():
    with pytest.raises(StudyError, match="optuna searches with one seed"):
        parse_study(tiny_study(searcher={"type": "optuna", "num_samples": 2}, seeds=[0, 1]))


def test_resolved_study_round_trips(tmp_path):
    spec = parse_study(tiny_study())
    text = yaml.safe_dump(spec.to_dict(), sort_keys=False)
    again = parse_study(yaml.safe_load(text), check_environment=False)
    assert again == spec


def _with_shared_looks(shared) -> dict:
    study = tiny_study()
    study["dataset"] = {**study["dataset"], "options": {**study["dataset"].get("options", {}),
                                                       "shared_looks": shared}}
    return study


def test_shared_looks_parse_round_trip_and_bad_pairs_are_named():
    spec = parse_study(_with_shared_looks([[4, 2]]))
    assert spec.dataset.options.shared_looks == ((4, 2),)
    text = yaml.safe_dump(spec.to_dict(), sort_keys=False)
    assert parse_study(yaml.safe_load(text), check_environment=False) == spec
    with pytest.raises(StudyError) as err:
        parse_study(_with_shared_looks([[2, 4], [9, 1], [3], [5, 3], [3, 1]]))
    text = str(err.value)
    for fragment in ("shared_looks[0]: [2, 4]", "shared_looks[1]: [9, 1]", "shared_looks[2]: [3]",
                     "phase 3 is itself rendered like another phase"):
        assert fragment in text
    with pytest.raises(StudyError, match="shared_looks: 'x'.*list of \\[phase, like\\] pairs"):
        parse_study(_with_shared_looks("x"))


def test_search_space_reference_resolves_next_to_study(tmp_path):
    (tmp_path / "search_spaces").mkdir()
    raw = tiny_study()
    (tmp_path / "search_spaces" / "mine.yaml").write_text(yaml.safe_dump(raw["search_space"]))
    raw["search_space"] = "mine"
    (tmp_path / "studies").mkdir()
    study = tmp_path / "studies" / "s.yaml"
    study.write_text(yaml.safe_dump(raw))
    assert load_study(study).search_space.name == "mine"
    raw["search_space"] = "missing"
    study.write_text(yaml.safe_dump(raw))
    with pytest.raises(StudyError, match="'missing' was not found; valid choices: mine"):
        load_study(study)


def test_trial_params_from_tune_config():
    p = TrialParams.from_dict({"norm": "group", "frozen_stages": 1, "seq_len": 4,
                               "videos_per_batch": 2, "lr": 1e-3, "weight_decay": 0.0, "seed": 3})
    assert p.as_dict()["seed"] == 3 and isinstance(p.lr, float)


def test_optuna_storage_password_moves_to_pgpassword(tmp_path, monkeypatch):
    import os

    from pitfalls.sweep.space import optuna_storage_url

    monkeypatch.setenv("PGPASSWORD", "")  # recorded, so the test leaves it as it found it
    url = optuna_storage_url(tmp_path, "postgresql+psycopg2://me:s3cr%40t@127.0.0.1:5433/optuna")
    assert url == "postgresql+psycopg2://me@127.0.0.1:5433/optuna"
    assert os.environ["PGPASSWORD"] == "s3cr@t"
    assert optuna_storage_url(tmp_path).startswith("sqlite:///")


def _with_precise_bn_factor(batches: int) -> dict:
    raw = tiny_study(evaluation={"precise_bn_batches": batches})
    raw["search_space"] = {"factors": {**raw["search_space"]["factors"], "precise_bn": [False, True]}}
    return raw


def test_precise_bn_as_a_factor_decides_per_trial_and_needs_batches():
    from pitfalls.config import TrialConfig, precise_bn_batches

    with pytest.raises(StudyError, match="evaluation.precise_bn_batches: 0 must be >= 1 when "
                                         "precise_bn is a factor"):
        parse_study(_with_precise_bn_factor(0))
    spec = parse_study(_with_precise_bn_factor(7))
    params = {"norm": "batch", "frozen_stages": 0, "seq_len": 4, "videos_per_batch": 2, "lr": 1e-3,
              "weight_decay": 0.0, "seed": 0}
    on = TrialConfig(spec, TrialParams.from_dict({**params, "precise_bn": True}))
    off = TrialConfig(spec, TrialParams.from_dict({**params, "precise_bn": False}))
    assert precise_bn_batches(on) == 7 and precise_bn_batches(off) == 0  # off = the EMA
    assert spec.num_trials == 2 * parse_study(tiny_study()).num_trials
    study_level = parse_study(tiny_study(evaluation={"precise_bn_batches": 5}))
    assert precise_bn_batches(TrialConfig(study_level, TrialParams.from_dict(params))) == 5


BATCH_SHAPES = [{"videos_per_batch": 1, "seq_len": 4}, {"videos_per_batch": 2, "seq_len": 2}]


def _linked(levels=BATCH_SHAPES, **overrides) -> dict:
    """tiny_study with videos_per_batch and seq_len set together by the linked factor batch_shape."""
    raw = tiny_study(**overrides)
    factors = raw["search_space"]["factors"]
    del factors["seq_len"], factors["videos_per_batch"]
    factors["batch_shape"] = levels
    return raw


def test_linked_factor_is_one_factor_whose_levels_set_several_parameters():
    spec = parse_study(_linked(seeds=[0, 1]))
    space = spec.search_space
    assert space.linked == {"batch_shape": ("videos_per_batch", "seq_len")}
    assert space.varied_factors == ["norm", "batch_shape"]
    assert space.varied_params == ["norm", "videos_per_batch", "seq_len"]
    assert spec.num_trials == 2 * 2 * 2  # norms x batch shapes x seeds (not 2 x 2 x 2 x 2)
    assert space.param_values()["seq_len"] == (4, 2)
    assert space.param_levels("seq_len") == [("batch_shape[0].seq_len", 4),
                                             ("batch_shape[1].seq_len", 2)]
    text = yaml.safe_dump(spec.to_dict(), sort_keys=False)
    assert parse_study(yaml.safe_load(text), check_environment=False) == spec


def test_linked_level_order_of_keys_does_not_matter_and_labels_follow_the_first():
    levels = [{"seq_len": 4, "videos_per_batch": 1}, {"videos_per_batch": 2, "seq_len": 2}]
    space = parse_study(_linked(levels)).search_space
    assert space.factor_dict["batch_shape"][1] == {"seq_len": 2, "videos_per_batch": 2}
    assert list(space.factor_dict["batch_shape"][1]) == ["seq_len", "videos_per_batch"]


def test_tune_config_of_a_linked_level_expands_to_trial_params():
    from pitfalls.config import level_label

    space = parse_study(_linked()).search_space
    label = level_label(BATCH_SHAPES[1])
    assert label == "videos_per_batch=2, seq_len=2"
    config = {"norm": "group", "frozen_stages": 1, "batch_shape": label, "lr": 1e-3,
              "weight_decay": 0.0, "seed": 3}
    p = TrialParams.from_dict(space.expand(config))
    assert (p.videos_per_batch, p.seq_len, p.norm, p.seed) == (2, 2, "group", 3)
    with pytest.raises(KeyError, match="batch_shape: 'videos_per_batch=9, seq_len=2' is not one"):
        space.expand({**config, "batch_shape": "videos_per_batch=9, seq_len=2"})


def test_bad_linked_factors_are_all_reported_with_field_and_value():
    raw = _linked([{"videos_per_batch": 1, "seq_len": 4}, {"videos_per_batch": 2},
                   {"videos_per_batch": 1, "seq_len": 4}, {"videos_per_batch": 0, "seq_len": "x"}])
    raw["search_space"]["factors"]["seq_len"] = [4]
    raw["search_space"]["factors"]["norm"] = [{"videos_per_batch": 1, "seq_len": 2}]
    raw["search_space"]["factors"]["one"] = [{"videos_per_batch": 1}, {"videos_per_batch": 2}]
    raw["search_space"]["factors"]["odd"] = [{"videos_per_batch": 1, "depth": 2},
                                             {"videos_per_batch": 2, "depth": 3}]
    with pytest.raises(StudyError) as info:
        parse_study(raw)
    text = str(info.value)
    for needle in (
            "factors.batch_shape[1]: {'videos_per_batch': 2} must set the same parameters as every "
            "level: videos_per_batch, seq_len",
            "factors.batch_shape[2]: {'videos_per_batch': 1, 'seq_len': 4} repeats an earlier level",
            "factors.batch_shape[3].videos_per_batch: 0 must be >= 1",
            "factors.batch_shape[3].seq_len: 'x' must be an integer",
            "factors.seq_len: 'seq_len' is also set by factor batch_shape",
            "factors.norm: 'norm' names a trial parameter; a linked factor",
            "factors.one[0]: {'videos_per_batch': 1} must set at least two parameters",
            "factors.odd[0].depth: 'depth' is not an ablatable parameter; valid choices: norm"):
        assert needle in text, text
    assert len(info.value.problems) == 8, text


def test_a_factor_that_is_neither_a_parameter_nor_linked_is_refused():
    raw = _linked()
    raw["search_space"]["factors"]["batch_shape"] = [1, 2]
    with pytest.raises(StudyError) as info:
        parse_study(raw)
    text = str(info.value)
    assert "factors.batch_shape: 'batch_shape' is not an ablatable parameter" in text
    assert "'seq_len' is missing" in text and "a linked factor may set them" in text


def test_linked_values_reach_the_data_model_and_batch_checks():
    levels = [{"videos_per_batch": 3, "seq_len": 500, "frozen_stages": 9, "norm": "batch"},
              {"videos_per_batch": 2, "seq_len": 4, "frozen_stages": 1, "norm": "none"}]
    raw = _linked(levels, performance={"grad_accumulation": 2})
    del raw["search_space"]["factors"]["frozen_stages"], raw["search_space"]["factors"]["norm"]
    with pytest.raises(StudyError) as info:
        parse_study(raw)
    text = str(info.value)
    for needle in ("batch_shape[0].videos_per_batch: 3 must be divisible by resources.workers x "
                   "performance.grad_accumulation",
                   "batch_shape[0].seq_len: 500 is longer than the shortest training video",
                   "batch_shape[0].frozen_stages: 9 is beyond test_resnet's 4 stages"):
        assert needle in text, text
    assert "batch_shape[1]" not in text and len(info.value.problems) == 3
    raw["model"] = {"backbone": "test_nfnet"}
    raw["search_space"]["factors"]["batch_shape"][0].update(seq_len=4, frozen_stages=1)
    with pytest.raises(StudyError, match=r"batch_shape\[0\].norm: 'batch' is not supported for "
                                         "NormFreeNet backbones"):
        parse_study(raw)


def test_precise_bn_in_a_linked_factor_needs_batches_and_decides_per_trial():
    from pitfalls.config import TrialConfig, precise_bn_batches

    levels = [{"precise_bn": False, "videos_per_batch": 1}, {"precise_bn": True, "videos_per_batch": 2}]
    raw = tiny_study()
    del raw["search_space"]["factors"]["videos_per_batch"]
    raw["search_space"]["factors"]["bn_stats"] = levels
    with pytest.raises(StudyError, match="precise_bn_batches: 0 must be >= 1 when precise_bn"):
        parse_study(raw)
    spec = parse_study({**raw, "evaluation": {"precise_bn_batches": 3}})
    config = {"norm": "batch", "frozen_stages": 1, "seq_len": 4, "lr": 1e-3,
              "weight_decay": 0.0, "seed": 0, "bn_stats": "precise_bn=False, videos_per_batch=1"}
    off = TrialConfig(spec, TrialParams.from_dict(spec.search_space.expand(config)))
    assert not off.params.precise_bn and precise_bn_batches(off) == 0
