"""How much faster is the platform's end-to-end step than the papers' reference loop? The same
CNN-LSTM and frames, trained by `Stepper` with its fast path vs a paper-style loop.

    uv run python benchmarks/e2e_vs_reference.py          # GPU: ResNet-50-GN, 1 x 64 frames of 384x216
    uv run python benchmarks/e2e_vs_reference.py --quick  # smoke run (seconds)
    python benchmarks/e2e_vs_reference.py --compile       # on a bare GPU box (no Ray needed)

platform: as in e2e_vs_timm.py (the fast path `performance:` resolves to: bf16 + channels-last +
  cuDNN autotuning on a GPU; `--compile` adds torch.compile; fp32 NCHW on a CPU).
reference: the loop the papers' code runs, written here: fp32, NCHW, no compile, no cuDNN
  autotuning, frames converted to float on the host and copied from pageable memory, the loss
  read back (`.item()`) every step.

Target: platform >= 2.5x reference on a GPU. On a CPU both run fp32 NCHW unless --precision bf16,
so the ratio mostly shows the host-side conversion and per-step synchronisation the platform
avoids. Ratios are medians of alternating rounds in one run.
"""

from __future__ import annotations

import torch
from _e2e import header, host_frames, measure, paper_model, parser, platform_step, settle, table

TARGET = 2.5  # platform frames/s over the reference loop's, on a GPU


def reference_step(args):
    """The papers' loop: fp32 NCHW, host-side float conversion, a sync every step."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = paper_model(args).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    loss_fn = torch.nn.CrossEntropyLoss()
    frames, labels = host_frames(args)

    def step():
        torch.backends.cudnn.benchmark = False  # a global flag: set per step
        x = frames.permute(0, 1, 4, 2, 3).float().div(255).contiguous().to(device)  # (B,T,3,H,W)
        y = labels.to(device)
        out, _ = model(x)
        loss = loss_fn(out.flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # logged every step

    return step


def main() -> None:
    args = settle(parser(__doc__.splitlines()[0]).parse_args())
    print(header(args))
    ref = reference_step(args)
    ours = platform_step(args)
    print(f"fast path: {ours.fast.as_params()}")
    timings = measure({"platform (fast path)": ours, "reference (paper-style loop)": ref}, args)
    print(table(timings))
    a, b = timings.values()
    target = f" (target >= {TARGET}x on a GPU)" if args.device.startswith("cuda") else ""
    print(f"platform / reference: {a.fps / b.fps:.2f}x{target}")


if __name__ == "__main__":
    main()
