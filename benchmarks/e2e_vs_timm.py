"""Does a trial train as fast as the backbone itself can train? The platform's end-to-end step
vs timm's own training step for the same backbone and the same frames per step.

    uv run python benchmarks/e2e_vs_timm.py               # GPU: ResNet-50-GN, 1 x 64 frames of 384x216
    uv run python benchmarks/e2e_vs_timm.py --quick       # smoke run (seconds)
    python benchmarks/e2e_vs_timm.py --compile --precision bf16   # on a bare GPU box (no Ray needed)

platform: `pitfalls.train.fast.Stepper` on `build_model` (the backbone + a causal LSTM head),
  frames converted from uint8 host memory each step (pinned, non-blocking), the fast path that
  `performance:` resolves to on the device (bf16 + channels-last on a GPU, fp32 NCHW on a CPU).
timm: what timm's own `benchmark.py --bench train` times: `timm.create_model(backbone,
  num_classes=7)` with the same norm, random input already on the device, channels-last and
  autocast as the platform resolves them, cross-entropy, AdamW, step. No LSTM, no host copy.

Target: platform >= 0.9x timm. Ratios are medians of alternating rounds in one run.
"""

from __future__ import annotations

import torch
from _e2e import NUM_CLASSES, header, measure, parser, platform_step, settle, table

TARGET = 0.9  # platform frames/s over timm's


def timm_step(args, fast):
    """timm's training step for the same backbone, with the same precision/layout/compile."""
    import timm

    from pitfalls.models.norms import NormOptions, convert_norms

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.backbone, pretrained=False, num_classes=NUM_CLASSES)
    model = convert_norms(model, args.norm, NormOptions()).to(device)
    fmt = torch.channels_last if fast.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if fast.compile:
        model.compile()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler(device.type, enabled=fast.precision == "fp16")
    n = args.videos * args.seq_len
    x = torch.randn(n, 3, args.height, args.width, device=device).to(memory_format=fmt)
    y = torch.randint(0, NUM_CLASSES, (n,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        torch.backends.cudnn.benchmark = fast.cudnn_benchmark  # a global flag: set per step
        optimizer.zero_grad(set_to_none=True)
        with fast.autocast():
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def main() -> None:
    args = settle(parser(__doc__.splitlines()[0]).parse_args())
    print(header(args))
    ours = platform_step(args)
    fast = ours.fast
    print(f"fast path: {fast.as_params()}")
    timings = measure({"platform (CNN + LSTM, host frames)": ours,
                       "timm (CNN, input on device)": timm_step(args, fast)}, args)
    print(table(timings))
    a, b = timings.values()
    print(f"platform / timm: {a.fps / b.fps:.2f}x (target >= {TARGET}x)")


if __name__ == "__main__":
    main()
