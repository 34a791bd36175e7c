"""Pretrained weights through timm, from a Hugging Face cache the test builds (nothing is ever
downloaded): the loaded tensors are exactly those written, the weights' mean/std normalize the
inputs, a frozen stage stays bit-identical after a real training step, a norm level that keeps
the weights' own normalization loads everything and one that replaces it is refused (or starts
those layers from scratch, recorded), and validation refuses weights this machine cannot have,
fast, naming the tag and where it looked."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pitfalls.config import StudyError, TrialConfig, parse_study
from tests.conftest import ROOT, _free_port
from tests.helpers import tiny_params, tiny_study

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face home, offline. huggingface_hub reads HF_HOME / HF_HUB_CACHE /
    HF_HUB_OFFLINE into `constants` when first imported (maybe by an earlier test, through
    timm), so those are set too: what a fresh process with these variables would see."""
    from huggingface_hub import constants

    home = tmp_path / "hf"
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home


def write_cached_weights(home: Path, name: str, seed: int = 0) -> dict:
    """Seeded random weights for timm tag `name` (classifier included, as timm's checkpoints
    are) in the cache layout huggingface_hub reads: hub/models--timm--NAME/snapshots/SHA/
    model.safetensors and refs/main. Returns the tensors."""
    import timm
    import torch
    from safetensors.torch import save

    model = timm.create_model(name, pretrained=False)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            state[k] = torch.full_like(v, 7)
        elif k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(v.shape, generator=g) * 0.1
    data = save(state)
    sha = hashlib.sha1(data).hexdigest()
    repo = home / "hub" / f"models--timm--{name}"
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "snapshots" / sha / "model.safetensors").write_bytes(data)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    return state


def _build(name: str, norm: str, **kw):
    from pitfalls.models.video_model import build_model

    return build_model(backbone=name, norm=norm, frozen_stages=kw.pop("frozen_stages", 0),
                       num_classes=3, pretrained=True, **kw)


def _same(a, b) -> bool:
    import torch

    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("norm", ["batch", "batch_eval", "frozen_batch", "sync_batch"])
def test_bn_weights_load_exactly_under_every_bn_level(hf_home, norm):
    written = write_cached_weights(hf_home, "test_resnet.r160_in1k")
    model = _build("test_resnet.r160_in1k", norm)
    loaded = model.backbone.state_dict()
    expected = {k: v for k, v in written.items() if not k.startswith("fc.")}  # timm drops the classifier
    if norm == "frozen_batch":  # FrozenBN keeps statistics and affine, not the step counter
        expected = {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")}
    assert set(loaded) == set(expected)
    assert all(_same(loaded[k], v) for k, v in expected.items())
    assert model.reinitialized == ()


def test_inputs_are_normalized_with_the_weights_mean_and_std(hf_home):
    import torch

    from pitfalls.models.video_model import build_model

    write_cached_weights(hf_home, "test_efficientnet.r160_in1k")
    model = _build("test_efficientnet.r160_in1k", "batch").eval()
    assert (model.input_norm.mean, model.input_norm.std) == (IMAGENET_MEAN, IMAGENET_STD)
    x = torch.rand(2, 3, 32, 32) * 2 - 1  # as `to_input` makes them
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    seen = []
    model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        out = model.frame_features(x)
    expected = ((x + 1) / 2 - mean) / std
    assert torch.allclose(seen[0], expected, atol=1e-6) and not torch.allclose(seen[0], x, atol=0.1)
    with torch.no_grad():
        assert torch.allclose(out, model.backbone(expected), atol=1e-6)
    assert not any("input_norm" in k for k in model.state_dict())  # checkpoints unchanged
    # no pretrained weights: no normalization at all, the inputs reach the CNN as they are
    torch.manual_seed(0)
    plain = build_model(backbone="test_efficientnet", norm="batch", frozen_stages=0, num_classes=3).eval()
    assert plain.input_norm is None
    with torch.no_grad():
        assert torch.equal(plain.frame_features(x), plain.backbone(x))


def test_a_frozen_stage_stays_bit_identical_after_a_real_training_step(hf_home):
    import torch

    from pitfalls.models.backbone import stage_groups
    from pitfalls.train.loop import setup, train_epoch

    written = write_cached_weights(hf_home, "test_resnet.r160_in1k", seed=3)
    study = parse_study({**_pretrained_study(), "budget": {"epochs": 1, "steps_per_epoch": 1}})
    run = setup(TrialConfig(study, tiny_params(norm="batch", frozen_stages=1)), torch.device("cpu"))
    groups = stage_groups(run.model.backbone)
    frozen = tuple(groups[0] + groups[1])
    before = {k: v.clone() for k, v in run.model.backbone.state_dict().items()}
    assert all(_same(v, written[k]) for k, v in before.items() if k in written)  # loaded, frozen
    assert sum(k in written for k in before) > len(before) / 2
    train_epoch(run)
    after = run.model.backbone.state_dict()
    stuck = [k for k in before if k.startswith(frozen)]
    assert stuck and all(torch.equal(before[k], after[k]) for k in stuck)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(tuple(groups[2])))


def test_a_gn_model_keeps_its_own_groups_under_group(hf_home):
    written = write_cached_weights(hf_home, "test_efficientnet_gn.r160_in1k")
    model = _build("test_efficientnet_gn.r160_in1k", "group")  # group_norm_groups 8: not applied
    bn1 = model.backbone.bn1
    assert type(bn1).__name__ == "GroupNormAct" and bn1.num_groups == 3
    loaded = model.backbone.state_dict()
    assert all(_same(loaded[k], v) for k, v in written.items() if k in loaded)
    assert set(loaded) == {k for k in written if not k.startswith("classifier.")}


def test_convnext_weights_load_reshaped_into_the_conv_mlp_build(hf_home):
    """ConvNeXt is built with conv_mlp (every norm channels-first); its pretrained Linear MLP
    weights become the 1x1 convolutions', and the network computes what timm's own does."""
    import timm
    import torch

    written = write_cached_weights(hf_home, "test_convnext.r160_in1k")
    model = _build("test_convnext.r160_in1k", "layer").eval()
    loaded = model.backbone.state_dict()
    fc1 = "stages.0.blocks.0.mlp.fc1.weight"
    assert loaded[fc1].dim() == 4 and written[fc1].dim() == 2
    assert set(loaded) == {k for k in written if not k.startswith("head.fc.")}
    assert all(torch.equal(loaded[k].flatten(), v.flatten()) for k, v in written.items() if k in loaded)
    reference = timm.create_model("test_convnext.r160_in1k", pretrained=True, num_classes=0).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.backbone(x), reference(x), atol=1e-5)


def test_an_nfnet_loads_everything_under_none(hf_home):
    written = write_cached_weights(hf_home, "test_nfnet.r160_in1k")
    loaded = _build("test_nfnet.r160_in1k", "none").backbone.state_dict()
    assert set(loaded) == {k for k in written if not k.startswith("head.fc.")}
    assert all(_same(loaded[k], written[k]) for k in loaded)


def test_replacing_pretrained_norms_is_refused_or_starts_them_from_scratch(hf_home):
    import timm
    import torch

    written = write_cached_weights(hf_home, "test_resnet.r160_in1k")
    bns = tuple(n for n, m in timm.create_model("test_resnet").named_modules()
                if isinstance(m, torch.nn.BatchNorm2d))
    with pytest.raises(ValueError, match=f"replaces {len(bns)} pretrained norm layers of "
                                         "test_resnet.r160_in1k"):
        _build("test_resnet.r160_in1k", "group")
    model = _build("test_resnet.r160_in1k", "group", reinit_replaced_norms=True)
    assert model.reinitialized == bns and "layer1.0.bn1" in bns
    gn = model.backbone.layer1[0].bn1
    assert type(gn) is torch.nn.GroupNorm
    assert torch.equal(gn.weight, torch.ones_like(gn.weight)) and not gn.bias.any()  # fresh
    loaded = model.backbone.state_dict()
    assert all(_same(loaded[k], v) for k, v in written.items() if ".bn" not in k and k in loaded
               and not k.startswith(("conv1.1.", "conv1.4.", "bn1.")) and "downsample.2" not in k)


def test_the_record_of_layers_started_from_scratch():
    from pitfalls.models.pretrained import PARAM_TEXT_LIMIT, reinit_params
    from pitfalls.results.store import trial_row

    names = ",".join(f"layer{i}.{j}.bn{k}" for i in range(1, 5) for j in range(6) for k in range(1, 4))
    params = reinit_params(names)
    assert params["reinit_norms"] == 72 and len(params["reinit_norm_layers"]) <= PARAM_TEXT_LIMIT
    assert params["reinit_norm_layers"].startswith("layer1.0.bn1, layer1.0.bn2")
    assert params["reinit_norm_layers"].endswith("more)")
    history = [{"epoch": 1, "val_accuracy": 0.5, "reinit_norm_layers": "bn1,layer1.0.bn1"},
               {"epoch": 2, "stage": 2, "val_accuracy": 0.6}]  # a second stage trains no CNN
    row = trial_row("s", "t", tiny_params().as_dict(), history, status="completed", error=None,
                    duration_s=1.0, workers=1)
    assert (row["reinit_norms"], row["reinit_norm_layers"]) == (2, "bn1, layer1.0.bn1")
    row = trial_row("s", "t", tiny_params().as_dict(), history[1:], status="completed", error=None,
                    duration_s=1.0, workers=1)
    assert row["reinit_norms"] is None and row["reinit_norm_layers"] is None


def _pretrained_study(backbone: str = "test_resnet.r160_in1k", norms=("batch",), **model) -> dict:
    study = tiny_study(model={"backbone": backbone, "pretrained": True,
                              "temporal_head": {"type": "lstm", "hidden_size": 16}, **model})
    study["search_space"]["factors"]["norm"] = list(norms)
    return study


def test_validation_refuses_a_level_that_replaces_the_weights_norms(hf_home):
    with pytest.raises(StudyError) as info:
        parse_study(_pretrained_study("resnet50.a1_in1k", ("batch", "group")), check_weights=False)
    assert info.value.problems == [
        "search_space.factors.norm[1]: 'group' replaces the batch norm layers of resnet50.a1_in1k's "
        "pretrained weights by group ones, losing their weights; valid for these weights: batch, "
        "batch_eval, frozen_batch, sync_batch (or set model.reinit_replaced_norms: true to start "
        "the replaced layers from scratch, or pair each norm with a backbone pretrained with it "
        "in a linked factor)"]
    parse_study(_pretrained_study("resnet50.a1_in1k", ("batch", "group"), reinit_replaced_norms=True),
                check_weights=False)
    paired = _pretrained_study("resnet50.a1_in1k")
    factors = paired["search_space"]["factors"]
    del factors["norm"]
    factors["pretrained_norm"] = [{"backbone": "resnet50.a1_in1k", "norm": "batch"},
                                  {"backbone": "resnet50_gn.a1h_in1k", "norm": "group"},
                                  {"backbone": "convnext_tiny.fb_in1k", "norm": "layer"},
                                  {"backbone": "nfnet_l0.ra2_in1k", "norm": "none"}]
    assert parse_study(paired, check_weights=False).num_trials == 4


def test_tags_are_validated_with_the_valid_ones_listed(hf_home):
    from pitfalls.models.backbone import backbone_info

    assert backbone_info("resnet50.a1_in1k").source.hf_hub_id == "timm/resnet50.a1_in1k"
    assert backbone_info("resnet50").source.name == "resnet50.a1_in1k"  # timm's default tag
    assert backbone_info("resnet50_gn.a1h_in1k").norm_kinds == ("group",)
    assert backbone_info("nfnet_l0.ra2_in1k").norm_kinds == ()
    with pytest.raises(StudyError) as info:
        parse_study(_pretrained_study("test_resnet.bogus"))
    assert info.value.problems == ["model.backbone: 'test_resnet.bogus' has no pretrained tag "
                                   "'bogus' in timm 1.0.31; valid tags: r160_in1k"]
    with pytest.raises(StudyError, match="has no pretrained weights in timm"):
        parse_study(_pretrained_study("efficientnet_b0_gn"))
    with pytest.raises(StudyError, match="model.weights: 'w.pt' and pretrained: true both give"):
        parse_study(_pretrained_study(weights="w.pt"), check_environment=False)


def _refused(study: dict, tmp_path: Path, env: dict) -> tuple[str, float]:
    """`pitfalls run` of `study` in a fresh process (imports included, as a user waits):
    its error output and seconds; it must exit 2 having written nothing."""
    import os

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    storage = tmp_path / "runs"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pitfalls.cli", "run", str(path), "--storage",
                           str(storage)], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, **env})
    seconds = time.perf_counter() - t0
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert not storage.exists()
    return proc.stderr, seconds


def test_offline_without_the_cache_the_study_is_refused_fast_naming_the_tag(hf_home, tmp_path):
    err, seconds = _refused(_pretrained_study(), tmp_path, {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    assert ("model.backbone: 'test_resnet.r160_in1k' needs pretrained weights test_resnet.r160_in1k "
            f"(not in the Hugging Face cache {hf_home / 'hub'}, and HF_HUB_OFFLINE is set") in err, err
    assert seconds < 10, seconds
    write_cached_weights(hf_home, "test_resnet.r160_in1k")  # cached: the same study validates
    parse_study(_pretrained_study())


def test_an_unreachable_or_silent_hub_is_refused_within_the_timeout(hf_home, tmp_path):
    """Not cached and online: the Hub (here a mirror, HF_ENDPOINT) is asked; a refused
    connection fails at once, a server that never answers after HUB_TIMEOUT_S."""
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "0"}
    refused = f"http://127.0.0.1:{_free_port()}"
    err, seconds = _refused(_pretrained_study(), tmp_path, {**env, "HF_ENDPOINT": refused})
    assert f"and {refused} cannot be reached (ConnectError" in err and seconds < 10, (err, seconds)
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        err, seconds = _refused(_pretrained_study(), tmp_path, {**env, "HF_ENDPOINT": endpoint})
    # httpx's timeout or, should that take longer, the check's own deadline
    assert (f"and {endpoint} cannot be reached (ReadTimeout" in err
            or f"and {endpoint} did not answer within 3 s" in err), err
    assert seconds < 10, seconds


def test_a_standin_written_to_a_hf_cache_is_what_pretrained_loads(hf_home):
    import torch

    from pitfalls.data.synthetic import SyntheticOptions
    from pitfalls.repro_pretrain import pretrain_standin

    path = pretrain_standin("test_resnet.r160_in1k", hf_home, SyntheticOptions(frame_size=16),
                            looks=1, videos_per_look=2, steps=2, batch=4)
    assert path.is_relative_to(hf_home / "hub" / "models--timm--test_resnet.r160_in1k" / "snapshots")
    parse_study(_pretrained_study())  # validation finds it
    from safetensors.torch import load_file

    saved = load_file(path)
    loaded = _build("test_resnet.r160_in1k", "batch").backbone.state_dict()
    assert set(saved) == set(loaded) and all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_the_standin_command_says_what_the_weights_are(hf_home, capsys):
    from pitfalls.cli import main

    assert main(["pretrain-standin", "test_resnet.bogus", "--hf-home", str(hf_home)]) == 2
    assert "valid tags: r160_in1k" in capsys.readouterr().err
    assert main(["pretrain-standin", "test_resnet", "--hf-home", str(hf_home), "--steps", "1",
                 "--frame-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "test_resnet.r160_in1k: SYNTHETIC STAND-IN weights, not ImageNet ones" in out
    assert f"HF_HOME={hf_home} HF_HUB_OFFLINE=1" in out


PAPER = sorted((ROOT / "studies" / "paper").glob("*.yaml"))


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_paper_studies_start_from_pretrained_weights_their_norms_keep(path, hf_home):
    from pitfalls.config import load_study
    from pitfalls.models.backbone import backbone_info
    from pitfalls.models.norms import keeping

    spec = load_study(path, check_data=False, check_weights=False)
    assert spec.model.pretrained and not spec.model.reinit_replaced_norms
    backbones = spec.search_space.param_values().get("backbone", (spec.model.backbone,))
    assert all(backbone_info(b).tag for b in backbones)  # named tags, not timm's default
    for where, norm in spec.search_space.param_levels("norm"):
        level = where.split("[")[0]
        if level in spec.search_space.linked:  # paired with its backbone
            i = int(where.split("[")[1].split("]")[0])
            backbone = spec.search_space.factor_dict[level][i]["backbone"]
        else:
            backbone = spec.model.backbone
        assert norm in keeping(backbone_info(backbone).norm_kinds), (where, norm, backbone)
    with pytest.raises(StudyError, match="needs pretrained weights .* HF_HUB_OFFLINE is set"):
        load_study(path, check_data=False)  # this machine has none of them


def test_validate_checks_a_paper_study_for_another_machine(hf_home, capsys):
    """A study meant for a GPU machine with the data and the weights, validated here: everything
    but those two with --skip-data --skip-weights; without --skip-weights the missing weights."""
    from pitfalls.cli import main

    study = str(ROOT / "studies" / "paper" / "cholec80_norm_e2e.yaml")
    assert main(["validate", study, "--skip-data", "--skip-weights"]) == 0
    assert ("valid, 30 trial(s) (not checked: the data and the pretrained weights' availability)"
            in capsys.readouterr().out)
    assert main(["validate", study, "--skip-data"]) == 2
    err = capsys.readouterr().err
    assert err.count("needs pretrained weights") == 4 and "HF_HUB_OFFLINE is set" in err, err
    assert "pretrained_norm[3].backbone: 'resnet50_gn.a1h_in1k' needs pretrained weights" in err


def test_a_relative_cache_path_is_made_absolute_for_the_trials(tmp_path, monkeypatch):
    """Trials run in Tune's trial directories: `HF_HOME=runs/hf` must still name the same
    cache there (it did not: every trial of a stand-in study failed with LocalEntryNotFound)."""
    from pitfalls.cli import absolute_cache_paths

    monkeypatch.chdir(tmp_path)
    env = {"HF_HOME": "runs/hf", "HF_HUB_CACHE": str(tmp_path / "abs"), "HF_HUB_OFFLINE": "1"}
    absolute_cache_paths(env)
    assert env == {"HF_HOME": str(tmp_path / "runs" / "hf"), "HF_HUB_CACHE": str(tmp_path / "abs"),
                   "HF_HUB_OFFLINE": "1"}
