"""Picking the device and the fastest precision it supports."""
import torch

from .errors import CaptchaError


def cpu_has_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere it is emulated and slow."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def training_precision(precision, accelerator: str):
    """Lightning's precision for trainer.precision=auto: bf16-mixed (or 16-mixed on GPUs without
    bf16) on a GPU, bf16-mixed on CPUs with native bf16, else 32-true."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise CaptchaError(f"device={device!r}: choose auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CaptchaError(f"device={device}, but no CUDA GPU is visible: use device=cpu or device=auto")
    return torch.device(device)


def inference_dtype(precision, device: torch.device):
    """The autocast dtype for precision auto/32/bf16/16 (None: full precision)."""
    precision = str(precision)
    if precision == "auto":
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
        precision = "bf16" if native else "32"
    if precision not in ("32", "bf16", "16"):
        raise CaptchaError(f"precision={precision!r}: choose auto, 32, bf16 or 16")
    return {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[precision]
