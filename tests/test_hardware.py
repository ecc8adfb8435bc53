"""precision=auto is decided by what the CPU computes natively, never by what oneDNN emulates."""
from pathlib import Path

import pytest

from captcha_lit import hardware
from captcha_lit.errors import CaptchaError

ICE_LAKE = frozenset("avx2 avx512f avx512bw avx512_vnni".split())       # AVX-512 and VNNI, no bf16
SAPPHIRE_RAPIDS = ICE_LAKE | {"avx512_bf16", "amx_bf16", "amx_tile"}
ZEN4 = ICE_LAKE | {"avx512_bf16"}
LAPTOP = frozenset("avx2 fma avx_vnni".split())


@pytest.mark.parametrize("flags, expected", [(ICE_LAKE, "32-true"), (SAPPHIRE_RAPIDS, "bf16-mixed"),
                                             (ZEN4, "bf16-mixed"), (LAPTOP, "32-true"), (frozenset(), "32-true")])
def test_auto_trains_in_bf16_only_where_the_cpu_has_it(monkeypatch, flags, expected):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    precision, why = hardware.training_precision("auto", "cpu")
    assert precision == expected
    assert ("native" in why) and (("no native bf16" in why) == (expected == "32-true"))
    assert hardware.training_precision("bf16-mixed", "cpu") == ("bf16-mixed", "as set")


def test_a_limited_onednn_isa_takes_bf16_away(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: ZEN4)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert hardware.training_precision("auto", "cpu")[0] == "32-true"
    for above in ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX"):  # oneDNN's ISAs that include bf16
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", above)
        assert hardware.training_precision("auto", "cpu")[0] == "bf16-mixed", above


def test_vnni_and_reading_dtype_follow_the_flags(monkeypatch):
    import torch
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: ICE_LAKE)
    assert hardware.cpu_has_vnni() and hardware.inference_dtype("auto", torch.device("cpu")) is None
    monkeypatch.setattr(hardware, "cpu_flags", lambda: ZEN4)
    assert hardware.inference_dtype("auto", torch.device("cpu")) is torch.bfloat16
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    assert not hardware.cpu_has_vnni()


def test_the_flags_are_read_from_this_machine():
    if not Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo here")
    flags = hardware.cpu_flags()
    assert isinstance(flags, frozenset) and ("fpu" in flags or "fp" in flags)


def test_a_gpu_that_is_not_there_is_named(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert hardware.pick_device("cuda:0") == torch.device("cuda:0")
    for device in ("cuda:3", "cuda:x"):  # torch's own errors came later, inside .to(), naming no setting
        with pytest.raises(CaptchaError, match=f"device={device}: the GPUs here are cuda:0 to cuda:0"):
            hardware.pick_device(device)
