"""Picking the device and the fastest precision it computes natively.

What a CPU computes natively is read from its flags, never from oneDNN: oneDNN reports bf16 as
supported on every AVX-512 CPU (Skylake-SP, Cascade Lake, Ice Lake) and emulates it there, 2.3x
slower than fp32 when training. Importing this module does not import torch."""
import os
from functools import lru_cache
from pathlib import Path

from .errors import CaptchaError

# the CPU flags (as Linux names them in /proc/cpuinfo) of native bf16 and int8 dot products
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU's feature flags; empty where Linux's /proc/cpuinfo cannot be read (macOS, Windows:
    every choice below then falls back to fp32, which is never emulated)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(word for line in text.splitlines() if line.startswith(("flags", "Features"))
                     for word in line.split(":", 1)[1].split())


def cpu_bf16() -> str | None:
    """The flag that makes bf16 native on this CPU, or None. ONEDNN_MAX_CPU_ISA below
    AVX512_CORE_BF16 (e.g. AVX2, to time a laptop's CPU on a newer one) takes it away, as it does
    from oneDNN; the ISAs above it (AVX512_CORE_FP16, AMX, AVX10) keep it."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if isa not in ("ALL", "DEFAULT") and not any(k in isa for k in ("BF16", "FP16", "AMX", "AVX10")):
        return None
    return next((f for f in BF16_FLAGS if f in cpu_flags()), None)


def cpu_has_vnni() -> bool:
    """True where the CPU has int8 dot products (AVX512-VNNI or AVX-VNNI), which onnxruntime's int8
    kernels use. Without them it multiplies through 16-bit sums that can saturate, and is no faster."""
    return any(f in cpu_flags() for f in VNNI_FLAGS)


def cpu_precision_reason() -> str:
    flag = cpu_bf16()
    if flag:
        return f"bf16 is native on this CPU ({flag})"
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    if isa and any(f in cpu_flags() for f in BF16_FLAGS):
        return f"ONEDNN_MAX_CPU_ISA={isa} keeps oneDNN below bf16"
    return (f"this CPU has no native bf16 (no {' or '.join(BF16_FLAGS)} flag): oneDNN would emulate it, "
            f"slower than fp32")


def _on_gpu(accelerator: str) -> bool:
    import torch
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def training_precision(precision, accelerator: str) -> tuple[str, str]:
    """(Lightning's precision, why) for trainer.precision: auto is bf16-mixed (16-mixed on GPUs
    without bf16) on a GPU, bf16-mixed on CPUs with native bf16, else 32-true."""
    if precision != "auto":
        return precision, "as set"
    if _on_gpu(accelerator):
        import torch
        return ("bf16-mixed", "the GPU computes bf16") if torch.cuda.is_bf16_supported() else \
            ("16-mixed", "the GPU has no bf16")
    return ("bf16-mixed" if cpu_bf16() else "32-true"), cpu_precision_reason()


def pick_device(device):
    import torch
    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not (device == "cuda" or device.startswith("cuda:")):
        raise CaptchaError(f"device={device!r}: choose auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CaptchaError(f"device={device}, but no CUDA GPU is visible: use device=cpu or device=auto")
    index = device.partition(":")[2]
    if index and not (index.isdigit() and int(index) < torch.cuda.device_count()):
        raise CaptchaError(f"device={device}: the GPUs here are cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device(device)


def inference_dtype(precision, device):
    """The dtype a network reads in for precision auto/32/bf16/16 (None: full precision)."""
    import torch
    precision = str(precision)
    if precision == "auto":
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_bf16() is not None
        precision = "bf16" if native else "32"
    if precision not in ("32", "bf16", "16"):
        raise CaptchaError(f"precision={precision!r}: choose auto, 32, bf16 or 16")
    return {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[precision]
