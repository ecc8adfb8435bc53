"""Console entry points (train.py, predict.py and the captcha-* commands all land here).
Each hands its Hydra config to the package and turns a CaptchaError into a one-line message."""
import sys

import hydra
from omegaconf import DictConfig

from .errors import CaptchaError
from .tasks import CONF_DIR

CONF = str(CONF_DIR)


def _fail(message: str, code: int = 2):
    print(message, file=sys.stderr)
    sys.exit(code)


def run_reporting(fn, *args):
    """fn(*args), with an expected failure as one `error:` line and exit code 2, and Ctrl-C as one
    line and exit code 130 (what was written before is intact: every write is atomic)."""
    try:
        return fn(*args)
    except CaptchaError as e:
        _fail(f"error: {e}")
    except OSError as e:  # the file system's own errors: a full disk, a read-only or missing path
        _fail(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}")
    except KeyboardInterrupt:
        _fail("interrupted (Ctrl-C); nothing half-written was left", 130)


@hydra.main(config_path=CONF, config_name="train", version_base="1.3")
def train(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from .train import train as run
    overrides = list(HydraConfig.get().overrides.task)  # resume= applies some, refuses others
    return run_reporting(run, cfg, overrides)


@hydra.main(config_path=CONF, config_name="predict", version_base="1.3")
def predict(cfg: DictConfig) -> None:
    from .predict import predict as run
    run_reporting(run, cfg)


@hydra.main(config_path=CONF, config_name="generate", version_base="1.3")
def generate(cfg: DictConfig) -> None:
    from .generate import generate as run
    run_reporting(run, cfg)
