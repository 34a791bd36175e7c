import pytest
import torch
from torch import nn

from pitfalls.models import NORM_NAMES, EvalModeBatchNorm2d, convert_norms, create_backbone
from pitfalls.models.backbone import backbone_info, stage_groups
from pitfalls.models.norms import NormOptions
from tests.helpers import lstm_model


def _norm_types(model):
    return {type(m).__name__ for m in model.modules()
            if "Norm" in type(m).__name__ or isinstance(m, nn.GroupNorm)}


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_every_norm_converts_all_batchnorms(norm):
    model = convert_norms(create_backbone("test_resnet"), norm)
    leftovers = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
    assert bool(leftovers) == (norm == "batch")
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 96) and torch.isfinite(out).all()


def test_batch_eval_keeps_statistics_but_trains_affine():
    bn = nn.BatchNorm2d(4)
    bn.running_mean.fill_(0.5)
    layer = convert_norms(nn.Sequential(bn), "batch_eval")[0]
    assert isinstance(layer, EvalModeBatchNorm2d)
    layer.train()
    x = torch.randn(8, 4, 5, 5) * 3 + 2
    layer(x).sum().backward()
    assert torch.allclose(layer.running_mean, torch.full((4,), 0.5))  # copied, never updated
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    expected = (x - 0.5) / torch.sqrt(torch.tensor(1.0 + layer.eps))
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_group_norm_uses_gcd_when_channels_not_divisible():
    layer = convert_norms(nn.Sequential(nn.BatchNorm2d(24)), "group", NormOptions(groups=16))[0]
    assert isinstance(layer, nn.GroupNorm) and layer.num_groups == 8


def test_frozen_stages_get_no_gradient_and_frozen_bn():
    model = lstm_model("batch", 2, 5)
    groups = stage_groups(model.backbone)
    frozen = {n for g in (0, 1, 2) for n in groups[g]}
    for name, module in model.backbone.named_modules():
        params = list(module.parameters(recurse=False))
        if name in frozen and params:
            assert not any(p.requires_grad for p in params), name
    assert all(p.requires_grad for n, p in model.backbone.named_parameters() if n.startswith("layer3"))
    frozen_bn = [n for n, m in model.backbone.named_modules() if type(m).__name__ == "FrozenBatchNorm2d"]
    assert frozen_bn and all(n.startswith(("conv1", "bn1", "layer1", "layer2")) for n in frozen_bn)
    model.train()
    x = torch.randn(1, 3, 3, 32, 32)
    before = model.backbone.layer3[0].bn1.running_mean.clone()
    logits, _ = model(x)
    logits.sum().backward()
    assert all(p.grad is None for p in model.backbone.conv1.parameters())
    assert model.backbone.layer3[0].conv1.weight.grad is not None
    assert not torch.equal(before, model.backbone.layer3[0].bn1.running_mean)  # unfrozen BN updates


def test_frozen_stages_beyond_stage_count_raises():
    assert backbone_info("test_resnet").num_stages == 4
    with pytest.raises(ValueError, match="has 4 stages"):
        lstm_model("group", 5, 3, 64)


def _future_leak(norm: str) -> float:
    """How much changing frames 4.. moves the logits of frames 0..3, in train mode."""
    torch.manual_seed(0)
    model = lstm_model(norm, 0, 4).train()
    x = torch.rand(1, 8, 3, 32, 32)
    y = x.clone()
    y[:, 4:] = torch.rand_like(y[:, 4:]) * 3
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(y)
    return (a[:, :4] - b[:, :4]).abs().max().item()


def test_train_mode_batchnorm_leaks_future_frames_but_groupnorm_does_not():
    """The papers' pitfall: BN statistics over a sequence let the past see the future."""
    assert _future_leak("batch") > 1e-3
    for norm in ("group", "batch_eval", "frozen_batch", "layer"):
        assert _future_leak(norm) < 1e-6, norm


def test_model_output_shape_and_carried_state():
    model = lstm_model("group", 0, 5).eval()
    x = torch.rand(2, 6, 3, 32, 32)
    with torch.no_grad():
        full, _ = model(x)
        first, state = model(x[:, :3])
        second, _ = model(x[:, 3:], state)
    assert full.shape == (2, 6, 5)
    assert torch.allclose(full, torch.cat([first, second], 1), atol=1e-5)


def test_shipped_backbone_table_matches_installed_timm():
    """The table that lets validation skip importing timm must agree with timm itself."""
    import json
    from dataclasses import replace
    from importlib.metadata import version

    import timm

    from pitfalls.models.backbone import TABLE_MODULES, TABLE_PATH, inspect_backbone

    data = json.loads(TABLE_PATH.read_text())
    assert data["timm_version"] == version("timm"), "regenerate with write_backbone_table()"
    listed = {n for m in TABLE_MODULES for n in timm.list_models(module=m)}
    assert set(data["models"]) <= listed and len(data["models"]) > 300
    for name in ("test_resnet", "resnet18", "resnet50d", "regnety_004", "convnext_atto",
                 "efficientnet_b0", "mobilenetv2_100", "mobilenetv3_large_100", "nfnet_l0"):
        info = backbone_info(name)
        assert replace(info, norms=()) == inspect_backbone(name), name
        assert info.norms
