"""Loading checkpoints without running any code: as the LightningModule (to export or train on),
or as a bare inference network that needs neither Lightning nor the renderer (to read)."""
import pickle
import re
from pathlib import Path

import torch

from ..errors import CaptchaError
from ..files import regular_file
from .net import ResNet, fold_batchnorm, normalise
from .spec import ModelSpec

def read_checkpoint(path, expect: dict | None = None) -> tuple[dict, dict]:
    """The checkpoint's hyperparameters and weights, checked.

    The file is read with weights_only=True: only tensors and plain values are unpickled, so a
    crafted checkpoint cannot execute code; it is refused instead. `expect` (e.g. task=, alphabet=,
    width=, height=) refuses a checkpoint trained for anything else.
    """
    path = Path(path)
    if not path.exists():
        raise CaptchaError(f"ckpt={path}: no such file")
    regular_file(path, "checkpoint")
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
    if not isinstance(hparams, dict) or "task" not in hparams or not isinstance(ckpt.get("state_dict"), dict):
        raise CaptchaError(f"{path}: not a captcha-lit checkpoint (no task in its hyperparameters)")
    spec = ModelSpec.read(hparams, str(path)).values()  # what it reads, every field checked
    for key, wanted in (expect or {}).items():
        if spec.get(key) != wanted:
            raise CaptchaError(f"{path}: trained for {key}={spec.get(key)!r}, not the {key}={wanted!r} asked for: "
                               f"use a checkpoint trained for {key}={wanted!r}")
    state = ckpt["state_dict"]
    if not all(torch.isfinite(t).all() for t in state.values() if torch.is_tensor(t) and t.is_floating_point()):
        raise CaptchaError(f"{path}: its weights hold NaN or infinite values (the run diverged); use an earlier "
                           f"checkpoint or train with a lower optimizer.lr")
    return hparams, state


def _unfit(path, e: Exception) -> CaptchaError:
    return CaptchaError(f"{path}: its hyperparameters and weights do not fit this version of captcha-lit "
                        f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]})")


def load_module(path, expect: dict | None = None):
    """The CaptchaModule (a LightningModule) in eval mode, rebuilt from the checkpoint's own
    hyperparameters."""
    from .module import CaptchaModule  # Lightning: only here, not for reading

    hparams, state = read_checkpoint(path, expect)
    try:
        module = CaptchaModule.from_hparams(hparams, str(path))
        module.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise _unfit(path, e) from None
    return module.eval()


class Reading(torch.nn.Module):
    """The inference network: uint8 (B, 3, H, W) images -> logits, scaling and normalisation
    inside (as in training), BatchNorm folded into the convolutions."""

    def __init__(self, net: torch.nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images):
        x = normalise(images, self.mean.float(), self.std.float())
        return self.net(x.to(self.mean.dtype))  # the weights' dtype: float32, or bfloat16 after .to(torch.bfloat16)


def load_network(path) -> tuple[ModelSpec, Reading]:
    """(what the model reads, the inference network in eval mode): the weight average when the run
    kept one, else the trained weights. Imports neither Lightning nor the renderer."""
    hp, state = read_checkpoint(path)
    spec = ModelSpec.read(hp, str(path))
    prefix = "ema_net." if any(k.startswith("ema_net.") for k in state) else "net."
    try:
        net = ResNet(spec.steps, len(spec.alphabet), tuple(hp["widths"]), tuple(hp["strides"]),
                     hp["blocks_per_stage"], hp["columns"], spec.head)
        net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        reading = Reading(fold_batchnorm(net.eval()), spec.mean, spec.std)
    except (TypeError, ValueError, RuntimeError, KeyError, IndexError) as e:
        raise _unfit(path, e) from None
    return spec, reading.eval()


def _reason(e: Exception) -> str:
    """The informative line of a torch.load error (its messages open with boilerplate)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:200] if lines else "empty or truncated file"
