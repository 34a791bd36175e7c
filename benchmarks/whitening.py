"""Cost of whitening norms relative to BatchNorm: forward+backward time and peak memory.

    uv run python benchmarks/whitening.py [--backbone resnet18] [--batch 16] [--size 112]

Builds the backbone (random weights) with each norm through the platform's own conversion
(`pitfalls.models`), and times a training step (forward, backward) on one batch. Every norm is
measured in a fresh subprocess, one after another in this one run, so ratios are comparable;
CPU always, and the GPU too when CUDA is present. Peak memory: on CPU the rise of the process's
peak RSS during the steps above its RSS with the model and input built (activations, gradients
and workspace; coarse: page-granular and allocator-dependent); on GPU
`torch.cuda.max_memory_allocated` during the steps above what was allocated before them. Needs torch
and timm only (no Ray).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

NORMS = ("batch", "iternorm", "swbn", "dbn")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(backbone: str, norm: str, device: str, batch: int, size: int, steps: int) -> dict:
    import torch

    from pitfalls.models import convert_norms, create_backbone

    torch.manual_seed(0)
    model = convert_norms(create_backbone(backbone, norm=norm), norm).to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)

    def step():
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mb()
    step()  # warm-up (allocator, kernels); counted in the peak, not in the time
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"norm": norm, "device": device, "ms": 1000 * statistics.median(times), "peak_mb": peak}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: "norm,device" in a subprocess
    args = ap.parse_args(argv)
    if args.one:
        norm, device = args.one.split(",")
        print(json.dumps(measure(args.backbone, norm, device, args.batch, args.size, args.steps)))
        return 0

    import timm
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"# whitening overhead: {args.backbone}, batch {args.batch} x 3 x {args.size}^2, "
          f"forward+backward, median of {args.steps} steps")
    print(f"# torch {torch.__version__}, timm {timm.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads" + (f", GPU {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    for device in devices:
        rows = []
        for norm in NORMS:
            out = subprocess.run([sys.executable, __file__, "--one", f"{norm},{device}",
                                  "--backbone", args.backbone, "--batch", str(args.batch),
                                  "--size", str(args.size), "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        ref = rows[0]
        print(f"\n{device}: {'norm':<9} {'ms/step':>9} {'x batch':>8} {'peak MB':>9} {'x batch':>8}")
        for r in rows:
            print(f"{'':<{len(device) + 2}}{r['norm']:<9} {r['ms']:>9.1f} {r['ms'] / ref['ms']:>8.2f} "
                  f"{r['peak_mb']:>9.1f} {r['peak_mb'] / max(ref['peak_mb'], 1e-9):>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
