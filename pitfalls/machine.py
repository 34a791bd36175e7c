"""What a trial's floating-point results depend on besides its config: the CPU and the kernels
torch picks for its instruction set, the math libraries' versions, the thread count. The same
config gives the same bits on one machine (tests/integration/test_repro_determinism.py); on
another CPU the kernels can differ in the last bit, and training amplifies that
(docs/reproduction.md), so every trial and every reproduction records these."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

# the CPU flags that decide which kernels torch, oneDNN and MKL run (the rest do not matter here)
# environment variables that override those choices (set on purpose, e.g. to imitate an AVX2 CPU)
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS",
              "OMP_NUM_THREADS", "MKL_NUM_THREADS")
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16",
                "amx_tile", "avx_vnni")


def _cpuinfo() -> tuple[str, list[str]]:
    """Model name with family/model/stepping (a VM may show only "Intel Xeon Processor"), flags."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first CPU's block is enough
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        model += (f" (family {fields['cpu family']}, model {fields.get('model', '?')}, "
                  f"stepping {fields.get('stepping', '?')})")
    return model, (fields.get("flags") or fields.get("Features") or "").split()


def _version(pattern: str, text: str) -> str:
    m = re.search(pattern, text)
    return m.group(1) if m else "absent"


def machine_info() -> dict[str, str]:
    """The machine as the numbers see it (strings, so they go into MLflow params and JSON)."""
    import torch

    model, flags = _cpuinfo()
    config = torch.__config__.show()
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "cpu_flags": " ".join(f for f in KERNEL_FLAGS if f in flags) or "none of " + " ".join(KERNEL_FLAGS),
        "isa": torch.backends.cpu.get_cpu_capability(),  # the ATen kernels torch dispatched to
        "threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "mkl": _version(r"Math Kernel Library Version ([\w.\-]+)", config),
        "onednn": _version(r"MKL-DNN v([\w.]+)", config),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "kernel_env": " ".join(f"{k}={os.environ[k]}" for k in KERNEL_ENV if k in os.environ) or "none",
    }


def machine_params() -> dict[str, str]:
    """`machine_info` as a trial's MLflow params (`machine.cpu`, `machine.isa`, ...)."""
    return {f"machine.{k}": v for k, v in machine_info().items()}


def describe(info: dict[str, str]) -> str:
    """One line for a report."""
    return (f"{info['cpu']} ({info['cores']} cores; flags {info['cpu_flags']}; torch kernels "
            f"{info['isa']}), {info['system']}; Python {info['python']}, torch {info['torch']} "
            f"(MKL {info['mkl']}, oneDNN {info['onednn']}), {info['threads']} thread(s); kernel "
            f"overrides: {info['kernel_env']}")
