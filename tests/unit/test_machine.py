"""What a trial records of its machine, and how trials take the driver's weight cache."""

from __future__ import annotations

import os

from pitfalls.machine import KERNEL_FLAGS, describe, machine_info, machine_params


def test_machine_info_names_the_cpu_its_kernels_and_the_overrides(monkeypatch):
    import torch

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    info = machine_info()
    assert info["isa"] == torch.backends.cpu.get_cpu_capability()
    assert info["torch"] == torch.__version__ and info["threads"] == str(torch.get_num_threads())
    assert set(info["cpu_flags"].split()) <= set(KERNEL_FLAGS) | {"none", "of"}
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in info["kernel_env"]
    assert all(isinstance(v, str) and v for v in info.values())
    params = machine_params()
    assert params["machine.isa"] == info["isa"] and len(params) == len(info)
    assert info["cpu"] in describe(info)


def test_trials_take_the_drivers_cache_settings_even_after_huggingface_hub_read_its_own(
        monkeypatch, tmp_path):
    from huggingface_hub import constants

    from pitfalls.models.pretrained import cache_dir, hf_environment, use_hf_environment

    saved = hf_environment()
    try:
        monkeypatch.setenv("HF_HUB_CACHE", "/elsewhere")
        use_hf_environment({"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
        assert "HF_HUB_CACHE" not in os.environ  # the driver had none: neither has the trial
        assert hf_environment() == {"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
        assert cache_dir() == str(tmp_path / "hub") and constants.HF_HUB_OFFLINE is True
    finally:
        use_hf_environment(saved)
    assert hf_environment() == saved
