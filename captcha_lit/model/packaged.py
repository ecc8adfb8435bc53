"""The readers shipped inside the package, and how a command line names them (pretrained:NAME).
Needs neither PyTorch nor onnxruntime."""
import re
from pathlib import Path

from ..errors import CaptchaError

# readers pretrained on rendered images only, shipped in fp16: taskN (the competition's style,
# conf/experiment/pretrain.yaml; init_from=pretrained starts a kaggle recipe from its task's) and
# general (many styles, conf/experiment/pretrain_general.yaml)
PRETRAINED = Path(__file__).parents[1] / "pretrained"


def pretrained(name: str) -> Path:
    """The packaged reader `name`: a competition task's (task1, task2, task3) or the general one."""
    path = PRETRAINED / f"{name}.ckpt"
    if not re.fullmatch(r"[\w.-]+", str(name)) or not path.is_file():
        have = ", ".join(sorted(p.stem for p in PRETRAINED.glob("*.ckpt")))
        what = f"ships pretrained readers for {have}" if have else f"was installed without its readers ({PRETRAINED} is empty)"
        raise CaptchaError(f"pretrained:{name}: captcha-lit {what}, not {name!r}; give a checkpoint's path instead "
                           f"(or init_from=null to train from scratch)")
    return path


def model_path(spec) -> Path:
    """A model named on a command line: a path, or pretrained:NAME for a packaged reader."""
    spec = str(spec)
    return pretrained(spec.split(":", 1)[1]) if spec.startswith("pretrained:") else Path(spec)
