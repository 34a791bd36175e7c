"""Every supported (family, norm) pair: converted everywhere, runs, and is batch-(in)dependent
exactly as the norm promises; freezing leaves frozen stages bit-identical after a step."""

from __future__ import annotations

import pytest
import torch

from pitfalls.models.backbone import (
    FAMILY_EXAMPLES,
    create_backbone,
    family_support,
    freeze_stages,
    stage_groups,
    support_markdown,
)
from pitfalls.models.norms import BATCH_DEPENDENT, NORM_NAMES, convert_norms, stray_norms
from tests.conftest import ROOT

PAIRS = [(f, n) for f, norms in family_support().items() for n in norms]
SIZE = 64


def _model(family: str, norm: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return convert_norms(create_backbone(FAMILY_EXAMPLES[family], norm=norm), norm)


def test_every_family_supports_a_norm_and_bn_families_support_all():
    support = family_support()
    assert set(support) == set(FAMILY_EXAMPLES)
    assert support["NormFreeNet"] == ("none",)  # norm-free: nothing to swap
    for family in ("ResNet", "RegNet", "ConvNeXt", "EfficientNet", "MobileNetV3"):
        assert len(support[family]) == len(NORM_NAMES), family


@pytest.mark.parametrize("family,norm", PAIRS)
def test_swap_is_complete_and_batch_dependence_is_as_promised(family, norm):
    model = _model(family, norm).train()
    assert stray_norms(model, norm) == []
    x = torch.rand(3, 3, SIZE, SIZE)
    y = x.clone()
    y[1:] = torch.rand(2, 3, SIZE, SIZE) * 2  # change only the *other* samples
    with torch.no_grad():
        a, b = model(x), model(y)
    assert a.shape[0] == 3 and torch.isfinite(a).all()
    if norm in BATCH_DEPENDENT:
        assert not torch.equal(a[0], b[0]), "BN in train mode must mix samples"
    else:
        assert torch.equal(a[0], b[0]), f"{norm} must not depend on the rest of the batch"


@pytest.mark.parametrize("family", list(FAMILY_EXAMPLES))
def test_fused_activation_is_kept(family):
    """Converting a fused norm+act layer keeps its activation: same count of activations."""
    def acts(m):
        return sum(isinstance(x, (torch.nn.ReLU, torch.nn.SiLU, torch.nn.Hardswish, torch.nn.GELU))
                   for x in m.modules())

    norm = family_support()[family][-1]
    before = acts(create_backbone(FAMILY_EXAMPLES[family], norm=norm))
    assert acts(_model(family, norm)) == before


FREEZE_CASES = [(f, n) for f, norms in family_support().items()
                for n in ("batch", "none", "iternorm", "swbn") if n in norms
                and not (n == "none" and "batch" in norms)]


@pytest.mark.parametrize("family,norm", FREEZE_CASES)
def test_frozen_stages_are_bit_identical_after_a_training_step(family, norm):
    model = _model(family, norm)
    freeze_stages(model, 2)
    groups = stage_groups(model)
    frozen = {n for g in groups[:3] for n in g}
    modules = dict(model.named_modules())
    before = {f"{n}.{k}": v.clone() for n in frozen
              for k, v in [*modules[n].named_parameters(recurse=False),
                           *modules[n].named_buffers(recurse=False)]}
    assert before
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1,
                            weight_decay=0.1)
    model(torch.rand(4, 3, SIZE, SIZE)).square().mean().backward()
    opt.step()
    modules = dict(model.named_modules())
    after = {f"{n}.{k}": v for n in frozen
             for k, v in [*modules[n].named_parameters(recurse=False),
                          *modules[n].named_buffers(recurse=False)]}
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(not p.requires_grad for n in frozen
                             for p in modules[n].parameters(recurse=False))


def test_docs_show_the_generated_support_table():
    text = (ROOT / "docs" / "norms.md").read_text()
    assert support_markdown() in text, "regenerate the table in docs/norms.md"
