"""The fast path of a training step: mixed precision, channels-last, `torch.compile`, cuDNN
autotuning, gradient accumulation and activation checkpointing, resolved once per trial.

The study asks (`performance:` in the study file, `PerformanceSpec`); `resolve` turns the
request into what this device can do (`auto` becomes bf16 + channels-last on a GPU with bf16,
fp16 with loss scaling on an older GPU, fp32 NCHW on a CPU), and `Stepper` runs one optimizer
step with it. Benchmarks call the same `Stepper`, so what they time is what trials run.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from pitfalls.config import PerformanceSpec
from pitfalls.models.temporal import Lanes, State

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class FastPath:
    """What a trial's training step actually uses on its device (recorded in MLflow)."""

    device_type: str
    precision: str  # fp32 | bf16 | fp16
    channels_last: bool
    compile: bool
    cudnn_benchmark: bool
    grad_accumulation: int
    activation_checkpointing: bool
    prefetch: bool  # training batches built in a background thread (`pitfalls.train.prefetch`)
    eval_videos: int  # videos evaluated together as lanes (`pitfalls.train.evaluation`)
    eval_chunk: int  # frames per lane per evaluation pass

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return DTYPES[self.precision]

    def autocast(self):
        """Mixed-precision context for forward passes (a no-op in fp32)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def as_params(self) -> dict[str, str]:
        return {"precision": self.precision, "channels_last": str(self.channels_last),
                "compile": str(self.compile), "cudnn_benchmark": str(self.cudnn_benchmark),
                "grad_accumulation": str(self.grad_accumulation),
                "activation_checkpointing": str(self.activation_checkpointing),
                "prefetch": str(self.prefetch), "eval_videos": str(self.eval_videos),
                "eval_chunk": str(self.eval_chunk)}


def resolve(perf: PerformanceSpec, device: torch.device) -> FastPath:
    """The fast path `perf` asks for, on `device`; a request the device cannot serve is an error."""
    cuda = device.type == "cuda"
    bf16_ok = torch.cuda.is_bf16_supported() if cuda else True
    precision = perf.precision
    if precision == "auto":
        precision = ("bf16" if bf16_ok else "fp16") if cuda else "fp32"
    if precision == "fp16" and not cuda:
        raise ValueError("performance.precision: 'fp16' needs a CUDA device (loss scaling); "
                         "use 'bf16' or 'fp32' on a CPU")
    if precision == "bf16" and not bf16_ok:
        raise ValueError(f"performance.precision: 'bf16' is not supported by "
                         f"{torch.cuda.get_device_name(device)}; use 'fp16' or 'auto'")
    channels_last = cuda if perf.channels_last == "auto" else bool(perf.channels_last)
    prefetch = cuda if perf.prefetch == "auto" else bool(perf.prefetch)
    return FastPath(device.type, precision, channels_last, perf.compile,
                    perf.cudnn_benchmark and cuda, perf.grad_accumulation,
                    perf.activation_checkpointing, prefetch, *eval_lanes(perf, cuda))


# Evaluation's lanes x chunk under `auto`: a GPU fills with 8 videos of 128 frames per pass; on
# a CPU batching videos did not pay (benchmarks/evaluation.py: 0.67x), so one at a time in 64s.
EVAL_AUTO = {True: (8, 128), False: (1, 64)}  # by "is the device a GPU"


def eval_lanes(perf: PerformanceSpec, cuda: bool) -> tuple[int, int]:
    """(eval_videos, eval_chunk) that `perf` resolves to on a GPU (`cuda`) or a CPU."""
    videos, chunk = EVAL_AUTO[cuda]
    return (videos if perf.eval_videos == "auto" else perf.eval_videos,
            chunk if perf.eval_chunk == "auto" else perf.eval_chunk)


def prepare_model(model: nn.Module, fast: FastPath) -> nn.Module:
    """Apply the model-side options in place (before the optimizer and DDP see the model)."""
    if fast.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: autotune once per shape
    backbone = model.backbone
    if fast.activation_checkpointing:
        if not hasattr(backbone, "set_grad_checkpointing"):
            raise ValueError(f"performance.activation_checkpointing: {type(backbone).__name__} "
                             "has no timm grad checkpointing")
        backbone.set_grad_checkpointing(True)
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)
    if fast.compile:
        backbone.compile()  # in place: parameter names (checkpoints) stay as they are
    return model


def frames_layout(x: torch.Tensor, fast: FastPath) -> torch.Tensor:
    """(B, T, 3, H, W) input in the memory layout the backbone runs in.

    Frames arrive as uint8 NHWC, so the float tensor is already channels-last in memory; the
    NCHW path pays one copy to give the convolutions the layout it asks for."""
    if fast.channels_last:
        return x
    return x.contiguous()


class Stepper:
    """One optimizer step: micro-batches of lanes under autocast, loss scaling for fp16,
    gradients reduced once per step under DDP. The head's state is split into micro-batches and
    joined again through the head's `lanes`, never unpacked. The loss is the head's training
    loss given the task's (`VideoModel.forward(..., loss=)`): the task's loss on the output, or
    a multi-stage head's own."""

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, loss_fn, fast: FastPath,
                 lanes: Lanes | None = None):
        self.net, self.optimizer, self.loss_fn, self.fast = net, optimizer, loss_fn, fast
        self.lanes = lanes or getattr(net, "module", net).head.lanes
        self.scaler = torch.amp.GradScaler(fast.device_type, enabled=fast.precision == "fp16")

    def step(self, x: torch.Tensor, labels: tuple[torch.Tensor, ...],
             state: State | None) -> tuple[torch.Tensor, State]:
        """Train on a batch of B lanes; returns the detached loss and the head's new state."""
        k = self.fast.grad_accumulation
        b = x.shape[0]
        if b % k:
            raise ValueError(f"performance.grad_accumulation {k} does not divide the {b} "
                             "sequences this worker trains on per step")
        m = b // k
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=x.device)
        states = []
        for i in range(k):
            part = slice(i * m, (i + 1) * m)
            sub_state = self.lanes.select(state, part)
            sync = i == k - 1 or not hasattr(self.net, "no_sync")
            ys = tuple(y[part] for y in labels)
            with (nullcontext() if sync else self.net.no_sync()), self.fast.autocast():
                loss, new_state = self.net(frames_layout(x[part], self.fast), sub_state,
                                           loss=lambda out, ys=ys: self.loss_fn(out, ys))
                loss = loss / k
            self.scaler.scale(loss).backward()
            total += loss.detach()
            states.append(new_state)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return total, self.lanes.join(states)
