"""A checkpoint's int8 copy: X.int8.onnx (with its contract X.int8.onnx.json and its fp32
original X.int8.fp32.onnx, which reads the int8 model's near ties again) beside X.ckpt, written
after training or by `captcha-export X.ckpt --int8 IMAGES`. Readers use it instead of the
checkpoint where it is both fast and faithful: on a CPU with int8 dot products (VNNI), when it
was made from this very checkpoint, when it read the same strings as fp32 on the images it
was checked on, and when its fp32 original is there. Finding it needs neither PyTorch nor onnxruntime."""
import hashlib
import json
import os
import sys
from pathlib import Path

from ..errors import CaptchaError
from ..hardware import cpu_has_vnni

# the share of checked images an int8 copy must read as fp32 does; below 1,000 checked images
# that is every one of them
AGREEMENT = 0.999


def copy_path(ckpt) -> Path:
    ckpt = Path(ckpt)
    return ckpt.with_suffix(".int8.onnx") if ckpt.suffix == ".ckpt" else Path(f"{ckpt}.int8.onnx")


def original_path(copy) -> Path:
    """The int8 copy's fp32 original, which reads its near ties again: X.int8.fp32.onnx."""
    return Path(copy).with_suffix(".fp32.onnx")


def second_look_of(contract: dict, folder) -> tuple[Path, float] | None:
    """The fp32 original (in `folder`) and the margin an int8 model's contract names for reading its
    near ties again; None for a plain model. KeyError, TypeError or ValueError: unreadable."""
    look = contract.get("second_look")
    if look is None:
        return None
    name = str(look["model"])
    if Path(name).name != name or not name.endswith(".onnx"):  # a file beside the copy, nothing elsewhere
        raise ValueError(f"second_look.model={name!r} must name an .onnx file beside the copy")
    return Path(folder) / name, float(look["margin"])


def again(read_again) -> str:
    """For messages: how many of the checked images the copy read again in fp32, if any."""
    return f"; {read_again} near ties read again in fp32" if read_again else ""


def digest(path) -> str:
    """The file's sha256: ties an int8 copy to the exact checkpoint it was made from."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def gpu_possible() -> bool:
    """Whether a CUDA (or ROCm) GPU might be visible, decided without importing torch (2 s of a
    reading's start-up): False only on macOS, and on Linux without an NVIDIA, AMD or WSL2 GPU driver."""
    if not sys.platform.startswith("linux"):
        return sys.platform != "darwin"
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/kfd", "/dev/dxg"))  # dxg: WSL2


def find(ckpt, forced: bool = False) -> tuple[Path | None, str | None]:
    """(the int8 copy to read with, or None; what was found, None without a copy). `forced`
    (precision=int8): any copy made from this checkpoint, whatever its agreement or the CPU; a
    missing one is an error."""
    if not Path(ckpt).is_file():
        raise CaptchaError(f"ckpt={ckpt}: no such file")
    path = copy_path(ckpt)
    make = f"make one with: captcha-export {ckpt} --int8 IMAGES (a folder of the task's images)"
    try:
        contract_file = path.with_suffix(".onnx.json")
        contract = json.loads(contract_file.read_text()) if path.is_file() and contract_file.is_file() else None
    except (OSError, ValueError, UnicodeDecodeError):
        contract = None
    contract = contract if isinstance(contract, dict) else None  # a half-made or foreign copy: none
    if contract is None or contract.get("checkpoint_sha256") != digest(ckpt):
        if forced:
            what = "no int8 copy" if contract is None else "an int8 copy made from another checkpoint"
            raise CaptchaError(f"precision=int8: {ckpt} has {what} at {path}; {make}")
        return None, None if contract is None else f"{path.name} was made from another checkpoint"
    checked = contract.get("agreement")
    try:
        same, n, read_again = int(checked["same_string"]), int(checked["images"]), int(checked.get("read_again", 0))
    except (TypeError, KeyError, ValueError, AttributeError):  # a contract without a usable count: never checked
        same, n, read_again = 0, 0, 0
    said = f"{path.name} (reads as fp32 on {same} of {n} checked images{again(read_again)})"
    if forced:
        return path, said
    if not n or same < AGREEMENT * n:
        return None, f"{said}: not faithful enough"
    try:
        look = second_look_of(contract, path.parent)
    except (TypeError, KeyError, ValueError):
        return None, f"{said}: its contract's second_look is unreadable"
    if look is not None and not look[0].is_file():
        return None, f"{said}: its fp32 original {look[0].name} is missing"
    if not cpu_has_vnni():
        return None, f"{said}: this CPU has no VNNI, where int8 does not pay"
    return path, said
