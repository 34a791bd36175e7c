"""GPU paths: run only where CUDA is present (never in CI), skip cleanly elsewhere."""

import pytest
import torch

from pitfalls.config import TrialConfig, TrialParams, parse_study
from pitfalls.models import build_model
from pitfalls.train import train
from tests.helpers import tiny_study

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_training_loop_runs_on_cuda():
    cfg = TrialConfig(parse_study(tiny_study(budget={"epochs": 1, "steps_per_epoch": 3})),
                      TrialParams("group", 1, 4, 2, 1e-3, 1e-4, 0))
    metrics = train(cfg, device=torch.device("cuda"))
    assert 0 <= metrics["val_accuracy"] <= 1


@pytest.mark.parametrize("norm", ["batch", "batch_eval", "group"])
def test_model_forward_backward_on_cuda_matches_cpu(norm):
    torch.manual_seed(0)
    cpu = build_model("test_resnet", norm, 1, num_classes=3, hidden_size=8).eval()
    gpu = build_model("test_resnet", norm, 1, num_classes=3, hidden_size=8)
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda().eval()
    x = torch.rand(2, 4, 3, 32, 32)
    with torch.no_grad():
        a, _ = cpu(x)
        b, _ = gpu(x.cuda())
    assert torch.allclose(a, b.cpu(), atol=1e-3)
