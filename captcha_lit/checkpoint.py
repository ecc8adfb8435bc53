"""Saving checkpoints atomically and loading them without running any code."""
import pickle
import zipfile
from pathlib import Path

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from .errors import CaptchaError
from .io import atomic_path
from .module import CaptchaModule


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but through a temporary file and a rename: a run killed
    while saving keeps its previous checkpoint intact."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def load_module(path) -> CaptchaModule:
    """A CaptchaModule in eval mode, rebuilt from the checkpoint's own hyperparameters.

    The file is read with weights_only=True: only tensors and plain values are unpickled, so a
    crafted checkpoint cannot execute code; it is refused instead.
    """
    path = Path(path)
    if not path.is_file():
        raise CaptchaError(f"ckpt={path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0]
        raise CaptchaError(f"{path}: refused: it holds objects other than tensors and plain values, and loading "
                           f"them could run code ({reason})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CaptchaError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0]})") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "task" not in hparams or "state_dict" not in ckpt:
        raise CaptchaError(f"{path}: not a captcha-lit checkpoint (no task in its hyperparameters)")
    try:
        module = CaptchaModule(**hparams)
        module.load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise CaptchaError(f"{path}: its hyperparameters and weights do not fit this version of captcha-lit "
                           f"({str(e).splitlines()[0]})") from None
    return module.eval()
