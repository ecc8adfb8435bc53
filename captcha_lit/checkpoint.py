"""Saving checkpoints atomically and loading them without running any code."""
import pickle
import re
from pathlib import Path

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from .errors import CaptchaError
from .files import atomic_path
from .module import CaptchaModule


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but through a temporary file and a rename: a run killed
    while saving keeps its previous checkpoint intact."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def load_module(path, expect: dict | None = None) -> CaptchaModule:
    """A CaptchaModule in eval mode, rebuilt from the checkpoint's own hyperparameters.

    The file is read with weights_only=True: only tensors and plain values are unpickled, so a
    crafted checkpoint cannot execute code; it is refused instead. `expect` (e.g. task=, alphabet=,
    width=, height=) refuses a checkpoint trained for anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise CaptchaError(f"ckpt={path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        blocked = re.search(r"GLOBAL (\S+)", str(e))
        if blocked:
            raise CaptchaError(f"{path}: refused: it would import {blocked.group(1)}, and loading it could run code; "
                               f"use a checkpoint that holds only tensors and plain values") from None
        raise CaptchaError(f"{path}: not a readable checkpoint ({_reason(e)})") from None
    except Exception as e:  # random bytes or text fail anywhere inside the unpickler (KeyError, IndexError, ...)
        raise CaptchaError(f"{path}: not a readable checkpoint ({type(e).__name__}: {_reason(e)})") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "task" not in hparams or "state_dict" not in ckpt:
        raise CaptchaError(f"{path}: not a captcha-lit checkpoint (no task in its hyperparameters)")
    for key, wanted in (expect or {}).items():
        if hparams.get(key) != wanted:
            raise CaptchaError(f"{path}: trained for {key}={hparams.get(key)!r}, not the {key}={wanted!r} asked for: "
                               f"use a checkpoint trained for {key}={wanted!r}")
    try:
        module = CaptchaModule(**hparams)
        module.load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise CaptchaError(f"{path}: its hyperparameters and weights do not fit this version of captcha-lit "
                           f"({str(e).splitlines()[0]})") from None
    if not all(torch.isfinite(t).all() for t in module.state_dict().values() if t.is_floating_point()):
        raise CaptchaError(f"{path}: its weights hold NaN or infinite values (the run diverged); use an earlier "
                           f"checkpoint or train with a lower optimizer.lr")
    return module.eval()


def _reason(e: Exception) -> str:
    """The informative line of a torch.load error (its messages open with boilerplate)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:200] if lines else "empty or truncated file"
