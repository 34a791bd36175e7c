"""GPU paths: run only where CUDA is present (never in CI), skip cleanly elsewhere."""

import pytest
import torch

from pitfalls.config import TrialConfig, parse_study
from pitfalls.train import train
from tests.helpers import lstm_model, tiny_params, tiny_study

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_training_loop_runs_on_cuda():
    cfg = TrialConfig(parse_study(tiny_study(budget={"epochs": 1, "steps_per_epoch": 3})),
                      tiny_params())
    metrics = train(cfg, device=torch.device("cuda"))
    assert 0 <= metrics["val_accuracy"] <= 1


@pytest.mark.parametrize("norm", ["batch", "batch_eval", "group"])
def test_model_forward_backward_on_cuda_matches_cpu(norm):
    torch.manual_seed(0)
    cpu = lstm_model(norm, 1, 3).eval()
    gpu = lstm_model(norm, 1, 3)
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda().eval()
    x = torch.rand(2, 4, 3, 32, 32)
    with torch.no_grad():
        a, _ = cpu(x)
        b, _ = gpu(x.cuda())
    assert torch.allclose(a, b.cpu(), atol=1e-3)


# --- the fast path (pitfalls.train.fast) on a GPU ---

def _cuda_step(perf, seed=0):
    import copy

    from pitfalls.config import PerformanceSpec  # noqa: F401 - perf is one
    from pitfalls.train.fast import Stepper, prepare_model, resolve
    from pitfalls.train.tasks import PhaseTask

    device = torch.device("cuda")
    torch.manual_seed(seed)
    base = lstm_model("group", 0, 3)
    fast = resolve(perf, device)
    model = prepare_model(copy.deepcopy(base).to(device), fast)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(4, 3, 3, 32, 32, generator=g) * 2 - 1).to(device)
    y = torch.randint(0, 3, (4, 3), generator=g).to(device)
    stepper = Stepper(model, opt, PhaseTask(3).loss, fast)
    loss, _ = stepper.step(x, (y,), None)
    return model, loss, stepper, fast


def test_auto_on_cuda_is_mixed_precision_channels_last():
    from pitfalls.config import PerformanceSpec
    from pitfalls.train.fast import resolve

    fast = resolve(PerformanceSpec(), torch.device("cuda"))
    assert fast.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert fast.channels_last and fast.cudnn_benchmark


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_step_stays_close_to_fp32(precision):
    from pitfalls.config import PerformanceSpec

    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    ref, loss32, _, _ = _cuda_step(PerformanceSpec(precision="fp32", channels_last=False))
    half, loss16, stepper, fast = _cuda_step(PerformanceSpec(precision=precision))
    assert fast.amp_dtype is not None and torch.isfinite(loss16)
    assert abs(loss16.item() - loss32.item()) < 0.05
    assert stepper.scaler.is_enabled() == (precision == "fp16")
    for p, q in zip(ref.parameters(), half.parameters()):
        assert torch.allclose(p, q, atol=5e-2)


def test_compiled_step_matches_eager():
    from pitfalls.config import PerformanceSpec

    eager, loss_e, _, _ = _cuda_step(PerformanceSpec(precision="fp32", channels_last=False))
    comp, loss_c, _, _ = _cuda_step(PerformanceSpec(precision="fp32", channels_last=False,
                                                    compile=True))
    assert abs(loss_e.item() - loss_c.item()) < 1e-4
    for p, q in zip(eager.parameters(), comp.parameters()):
        assert torch.allclose(p, q, atol=1e-4)


def test_training_on_cuda_records_its_fast_path():
    seen = []
    cfg = TrialConfig(parse_study(tiny_study(budget={"epochs": 1, "steps_per_epoch": 2})),
                      tiny_params())
    train(cfg, device=torch.device("cuda"), on_setup=seen.append)
    assert seen[0]["precision"] in ("bf16", "fp16") and seen[0]["channels_last"] == "True"
